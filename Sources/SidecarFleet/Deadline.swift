import NIOConcurrencyHelpers
import NIOCore

/// A client-side deadline that does not depend on the work noticing cancellation: a query on a
/// connection to a partitioned server may never return, so the caller is answered by whichever of
/// the work and the timer finishes first. The work then runs on unobserved (it is cancelled, and
/// ends when the connection fails); the timer is cancelled as soon as the work finishes.
enum Deadline {
    private struct State<T: Sendable> {
        var continuation: CheckedContinuation<T, any Error>?
        var timer: Task<Void, Never>?
        var work: Task<Void, Never>?
    }

    static func run<T: Sendable>(
        after timeout: TimeAmount,
        timeoutError: @escaping @Sendable () -> any Error,
        _ work: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let state = NIOLockedValueBox(State<T>())
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                state.withLockedValue { $0.continuation = continuation }
                let workTask = Task {
                    let result: Result<T, any Error>
                    do {
                        result = .success(try await work())
                    } catch {
                        result = .failure(error)
                    }
                    let (continuation, timer) = state.withLockedValue { state in
                        defer { state.continuation = nil; state.timer = nil }
                        return (state.continuation, state.timer)
                    }
                    timer?.cancel()
                    continuation?.resume(with: result)
                }
                let timerTask = Task {
                    try? await Task.sleep(nanoseconds: UInt64(max(0, timeout.nanoseconds)))
                    if Task.isCancelled { return }
                    let (continuation, work) = state.withLockedValue { state in
                        defer { state.continuation = nil; state.work = nil }
                        return (state.continuation, state.work)
                    }
                    guard let continuation else { return }
                    work?.cancel()
                    continuation.resume(throwing: timeoutError())
                }
                state.withLockedValue { state in
                    if state.continuation == nil {
                        timerTask.cancel()  // the work already finished
                    } else {
                        state.timer = timerTask
                        state.work = workTask
                    }
                }
            }
        } onCancel: {
            // The caller gave up: answer it now, and cancel the timer and the work.
            let (continuation, work, timer) = state.withLockedValue { state in
                defer { state = State() }
                return (state.continuation, state.work, state.timer)
            }
            timer?.cancel()
            work?.cancel()
            continuation?.resume(throwing: CancellationError())
        }
    }
}
