import ArgumentParser
import Foundation
import SidecarCore
import SidecarProxy
import SidecarStore

/// Where the cache database is, for commands that read it directly: `--database`, else the
/// configuration's `cache.path`. With no `cache.path` in the file, the daemon under systemd uses
/// `$STATE_DIRECTORY` (`/var/lib/llm-sidecar`), which a shell does not have: that file is used when
/// it exists and the per-user default does not.
struct DatabaseOption: ParsableArguments {
    @OptionGroup var configOption: ConfigOption

    @Option(name: .long, help: "The cache database (default: cache.path of the configuration).")
    var database: String?

    static let systemPath = "/var/lib/llm-sidecar/cache.sqlite3"

    func resolve() throws -> (path: String, configuration: SidecarConfiguration?) {
        let environment = ProcessInfo.processInfo.environment
        let (configPath, explicit) = configOption.path(environment: environment)
        var configuration: SidecarConfiguration?
        if explicit || FileManager.default.fileExists(atPath: configPath) {
            configuration = try ConfigOption.load(path: configPath, environment: environment, checkSecrets: false)
        }
        if let database { return (database, configuration) }
        let defaultPath = SidecarConfiguration.Cache.defaultPath(environment: environment)
        if let path = configuration?.cache.path, path != defaultPath { return (path, configuration) }
        if !FileManager.default.fileExists(atPath: defaultPath), FileManager.default.fileExists(atPath: Self.systemPath) {
            return (Self.systemPath, configuration)
        }
        return (defaultPath, configuration)
    }

    /// Opens an existing database; a missing one is an error (these commands never create it).
    func open() throws -> (ResponseCacheStore, String, SidecarConfiguration?) {
        let (path, configuration) = try resolve()
        guard FileManager.default.fileExists(atPath: path) else {
            throw CommandError("no cache database at \(path) (the daemon creates it on its first cacheable request; pass --database PATH for another)")
        }
        do {
            return (try ResponseCacheStore(path: path), path, configuration)
        } catch {
            throw CommandError("cannot open \(path): \(error)")
        }
    }
}

struct CommandError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Runs a command body, turning errors into one line on stderr and exit status 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("llm-sidecar: \(error)\n".utf8))
        throw ExitCode(error is ConfigurationError ? 78 : 1)
    }
}

/// Runs an async command body, turning errors into one line on stderr and exit status 1.
func reportingErrorsAsync<T>(_ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch {
        FileHandle.standardError.write(Data("llm-sidecar: \(error)\n".utf8))
        throw ExitCode(error is ConfigurationError ? 78 : 1)
    }
}

/// The configuration of a `--fleet` command: its `[fleet]` URL source must be readable.
func fleetConfiguration(_ option: ConfigOption) async throws -> SidecarConfiguration {
    try await reportingErrorsAsync {
        let environment = ProcessInfo.processInfo.environment
        let c = try ConfigOption.load(path: option.path(environment: environment).path, environment: environment, checkSecrets: false)
        guard c.fleet != nil else { throw CommandError("the configuration has no [fleet] table (docs/fleet.md)") }
        return c
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What the cache saved: hits, tokens and dollars, by model (reads the database; the daemon need not run).")

    @OptionGroup var databaseOption: DatabaseOption

    @Flag(name: .long, help: "JSON, the same shape as GET /stats.")
    var json = false

    @Option(name: .long, help: "Days of daily totals to show (default 7).")
    var days = 7

    @Flag(name: .long, help: "The whole fleet's counters, by node and model, from the [fleet] database.")
    var fleet = false

    func run() async throws {
        if fleet {
            let configuration = try await fleetConfiguration(databaseOption.configOption)
            let text = try await reportingErrorsAsync { try await FleetReport.stats(configuration, days: days, json: json) }
            return print(text, terminator: "")
        }
        try reportingErrors {
            let (store, path, configuration) = try databaseOption.open()
            _ = store
            let report = try CacheStatsReport.read(path: path, prices: configuration?.priceTable ?? PriceTable(), days: max(days, 0))
            print(json ? report.json() : report.table(), terminator: "")
        }
    }
}

struct Cache: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage the response cache (safe while the daemon runs).", subcommands: [Purge.self, Prune.self])

    struct Purge: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete cached answers: of one model, older than a duration, or all. A running daemon forgets its in-memory copies within a second.")

        @OptionGroup var databaseOption: DatabaseOption

        @Option(name: .long, help: "Only answers for this model group.")
        var model: String?

        @Option(name: .customLong("older-than"), help: "Only answers created longer ago than this, e.g. 12h, 7d.")
        var olderThan: String?

        @Flag(name: .long, help: "Every answer (required when neither --model nor --older-than is given).")
        var all = false

        func validate() throws {
            if !all, model == nil, olderThan == nil { throw ValidationError("say what to purge: --model, --older-than, or --all") }
            if all, model != nil || olderThan != nil { throw ValidationError("--all cannot be combined with --model or --older-than") }
            if let olderThan, DurationText.parse(olderThan) == nil {
                throw ValidationError("--older-than \"\(olderThan)\" is not a duration (write e.g. 12h, 7d)")
            }
        }

        func run() throws {
            try reportingErrors {
                let (store, path, _) = try databaseOption.open()
                let before = olderThan.flatMap(DurationText.parse).map { Int64(Date().timeIntervalSince1970) - $0.nanoseconds / 1_000_000_000 }
                let n = try store.purge(model: model, createdBefore: before)
                print("purged \(n) entr\(n == 1 ? "y" : "ies") from \(path)")
            }
        }
    }

    struct Prune: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete expired answers now, and evict least-recently-hit ones down to cache.max_bytes.")

        @OptionGroup var databaseOption: DatabaseOption

        func run() throws {
            try reportingErrors {
                let (store, path, configuration) = try databaseOption.open()
                let now = Int64(Date().timeIntervalSince1970)
                var expired = 0
                while true {
                    let n = try store.deleteExpired(now: now)
                    expired += n
                    if n == 0 { break }
                }
                let evicted = try store.evict(toFit: configuration?.cache.maxBytes ?? SidecarConfiguration.Cache().maxBytes)
                let (entries, bytes) = try store.sizes()
                print("pruned \(path): \(expired) expired, \(evicted) evicted; \(entries) entries, \(bytes) bytes left")
            }
        }
    }
}

struct SpendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spend",
        abstract: "What upstream calls cost today and this month (UTC), by model and by client credential (hashed).")

    @OptionGroup var databaseOption: DatabaseOption

    @Flag(name: .long, help: "JSON instead of a table.")
    var json = false

    @Flag(name: .long, help: "The whole fleet's spend, by node, model and client, from the [fleet] database.")
    var fleet = false

    func run() async throws {
        if fleet {
            let configuration = try await fleetConfiguration(databaseOption.configOption)
            let text = try await reportingErrorsAsync { try await FleetReport.spend(configuration, json: json) }
            return print(text, terminator: "")
        }
        try reportingErrors {
            let (store, path, configuration) = try databaseOption.open()
            let now = Int64(Date().timeIntervalSince1970)
            let today = UTCDay.day(now)
            let month = UTCDay.firstOfMonth(ofDay: today)
            let report = SpendReport(database: path, today: today, todayRows: try store.spend(since: today), monthRows: try store.spend(since: month),
                                     budgets: configuration?.budgets.limits ?? .init(), prices: configuration?.priceTable ?? PriceTable())
            print(json ? report.json() : report.table(), terminator: "")
        }
    }
}

/// The `spend` report: totals, by model and by client, for today and this month.
struct SpendReport {
    typealias Rows = [ResponseCacheStore.SpendKey: ResponseCacheStore.Spend]
    var database: String
    var today: String
    var todayRows: Rows
    var monthRows: Rows
    var budgets: BudgetLedger.Limits
    /// Prices what the providers' prompt caches saved.
    var prices = PriceTable()


    static func group(_ rows: Rows, by key: (ResponseCacheStore.SpendKey) -> String) -> [String: ResponseCacheStore.Spend] {
        rows.reduce(into: [:]) { $0[key($1.key), default: .init()] += $1.value }
    }

    private func period(_ rows: Rows) -> [String: Any] {
        let total = rows.values.reduce(into: ResponseCacheStore.Spend()) { $0 += $1 }
        func fields(_ s: ResponseCacheStore.Spend) -> [String: Any] {
            ["requests": s.requests, "prompt_tokens": s.promptTokens, "completion_tokens": s.completionTokens,
             "cached_tokens": s.cachedTokens, "cache_write_tokens": s.cacheWriteTokens, "usd": (s.usd * 1e8).rounded() / 1e8]
        }
        return [
            "total": fields(total),
            "by_model": Self.group(rows) { $0.model }.mapValues(fields),
            "by_deployment": Self.group(rows) { $0.deployment }.mapValues(fields),
            "by_client": Self.group(rows) { $0.client }.mapValues(fields),
            "provider_cache": providerCache(rows),
        ]
    }

    /// What the providers' prompt caches did: input tokens read from them, and the dollars that
    /// saved, in all and by deployment.
    private func providerCache(_ rows: Rows) -> [String: Any] {
        let byDeployment = CacheStatsReport.providerCache(rows, prices: prices)
        let total = byDeployment.values.reduce(into: ProviderCacheTally()) { $0 += $1 }
        return ["totals": total.fields, "by_deployment": byDeployment.mapValues(\.fields)]
    }

    func json() -> String {
        var t = period(todayRows)
        t["day"] = today
        var m = period(monthRows)
        m["month"] = UTCDay.month(ofDay: today)
        var object: [String: Any] = ["database": database, "today": t, "month": m]
        var budget: [String: Any] = [:]
        let spentToday = todayRows.values.reduce(0) { $0 + $1.usd }, spentMonth = monthRows.values.reduce(0) { $0 + $1.usd }
        if let d = budgets.dailyUSD { budget["daily_usd"] = d; budget["daily_left_usd"] = max(0, d - spentToday) }
        if let m = budgets.monthlyUSD { budget["monthly_usd"] = m; budget["monthly_left_usd"] = max(0, m - spentMonth) }
        if let c = budgets.clientDailyUSD { budget["client_daily_usd"] = c }
        object["budgets"] = budget
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    func table() -> String {
        var out = "llm-sidecar spend: \(database)\n"
        for (title, rows) in [("today (\(today), UTC)", todayRows), ("this month (\(UTCDay.month(ofDay: today)))", monthRows)] {
            let total = rows.values.reduce(into: ResponseCacheStore.Spend()) { $0 += $1 }
            out += "\n\(title): $\(String(format: "%.4f", total.usd)) for \(total.requests) requests, "
                + "\(total.promptTokens) prompt + \(total.completionTokens) completion tokens\n"
            let cache = CacheStatsReport.providerCache(rows, prices: prices)
            let p = cache.values.reduce(into: ProviderCacheTally()) { $0 += $1 }
            out += String(format: "provider prompt cache: %.1f%% of input tokens read from it, $%.4f saved\n", p.hitRatio * 100, p.usdSaved)
            if cache.count > 1 {
                out += "  " + "DEPLOYMENT".padding(toLength: 34, withPad: " ", startingAt: 0) + "CACHED".leftPadded(10) + "SAVED".leftPadded(12) + "\n"
                for (d, t) in cache.sorted(by: { $0.key < $1.key }).prefix(10) {
                    out += "  " + String(d.prefix(33)).padding(toLength: 34, withPad: " ", startingAt: 0)
                        + String(format: "%.1f%%", t.hitRatio * 100).leftPadded(10) + String(format: "$%.4f", t.usdSaved).leftPadded(12) + "\n"
                }
            }
            for (label, key) in [("MODEL", { (k: ResponseCacheStore.SpendKey) in k.model }), ("CLIENT", { (k: ResponseCacheStore.SpendKey) in k.client })] {
                let grouped = Self.group(rows, by: key).sorted { $0.value.usd > $1.value.usd }.prefix(10)
                guard !grouped.isEmpty else { continue }
                out += "  " + label.padding(toLength: 34, withPad: " ", startingAt: 0) + "REQUESTS".leftPadded(10) + "COST".leftPadded(12) + "\n"
                for (name, s) in grouped {
                    out += "  " + String(name.prefix(33)).padding(toLength: 34, withPad: " ", startingAt: 0)
                        + "\(s.requests)".leftPadded(10) + String(format: "$%.4f", s.usd).leftPadded(12) + "\n"
                }
            }
        }
        let spentToday = todayRows.values.reduce(0) { $0 + $1.usd }, spentMonth = monthRows.values.reduce(0) { $0 + $1.usd }
        if budgets.isEmpty {
            out += "\nbudgets: none configured\n"
        } else {
            out += "\nbudgets:\n"
            if let d = budgets.dailyUSD { out += String(format: "  daily    $%.4f of $%.4f left\n", max(0, d - spentToday), d) }
            if let m = budgets.monthlyUSD { out += String(format: "  monthly  $%.4f of $%.4f left\n", max(0, m - spentMonth), m) }
            if let c = budgets.clientDailyUSD { out += String(format: "  per client, daily: $%.4f\n", c) }
        }
        return out
    }
}

