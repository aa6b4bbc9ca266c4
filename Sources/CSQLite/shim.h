// Thin C shims over the system SQLite (libsqlite3-dev). Only what Swift cannot import is wrapped.
#ifndef SIDECAR_CSQLITE_SHIM_H
#define SIDECAR_CSQLITE_SHIM_H
#include <sqlite3.h>

/// SQLITE_TRANSIENT is a cast of -1 to a function pointer: SQLite copies the bytes before returning.
static inline sqlite3_destructor_type sidecar_sqlite_transient(void) { return SQLITE_TRANSIENT; }
#endif
