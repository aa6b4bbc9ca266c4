import Foundation

/// How many CPUs this process may really use, for the default `server.threads`: the smallest of
/// the CPUs in its affinity mask (`taskset`, systemd `CPUAffinity=`) and the CPU quota of every
/// cgroup on its path (systemd `CPUQuota=`, a container's `--cpus`), rounded up.
///
/// The machine's core count is wrong in both cases: two event loops pinned to one CPU take turns
/// on it and add a context switch per request; NIO's own count reads only the cgroup root's
/// quota and ignores the affinity mask. Pure: the caller reads the files (`CPUAllowance.read`
/// in the daemon) and passes their text.
public enum CPUAllowance {
    /// - Parameters:
    ///   - affinity: CPUs in the affinity mask (nil when unknown).
    ///   - quotas: the text of each `cpu.max` (cgroup v2: `"QUOTA PERIOD"` or `"max PERIOD"`) or
    ///     each cgroup v1 `(cfs_quota_us, cfs_period_us)` pair on the path, in any order.
    ///   - online: CPUs online, the fallback.
    public static func threads(affinity: Int?, cpuMax: [String], cfs: [(quota: String, period: String)], online: Int) -> Int {
        var n = max(1, online)
        if let affinity, affinity > 0 { n = min(n, affinity) }
        for line in cpuMax {
            if let q = quotaCPUs(cpuMax: line) { n = min(n, q) }
        }
        for pair in cfs {
            if let q = quotaCPUs(quota: pair.quota, period: pair.period) { n = min(n, q) }
        }
        return max(1, n)
    }

    /// CPUs a cgroup v2 `cpu.max` line allows, rounded up; nil for `max` (no limit) or bad text.
    public static func quotaCPUs(cpuMax line: String) -> Int? {
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" })
        guard parts.count == 2 else { return nil }
        return quotaCPUs(quota: String(parts[0]), period: String(parts[1]))
    }

    /// CPUs a quota/period pair allows, rounded up (150000/100000 is 2); nil when unlimited (-1, max).
    public static func quotaCPUs(quota: String, period: String) -> Int? {
        let q = quota.trimmingCharacters(in: .whitespacesAndNewlines)
        let p = period.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let quota = Int(q), quota > 0, let period = Int(p), period > 0 else { return nil }
        return max(1, (quota + period - 1) / period)
    }

    /// The cgroup v2 directory of each level from the root to `path` (from `/proc/self/cgroup`'s
    /// `0::/a/b` line): `["", "/a", "/a/b"]`; a limit anywhere above applies too.
    public static func cgroupV2Levels(procSelfCgroup text: String) -> [String]? {
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let path = line.dropFirst(3)
            var levels = [""]
            var current = ""
            for component in path.split(separator: "/") {
                current += "/" + component
                levels.append(current)
            }
            return levels
        }
        return nil
    }

    /// For cgroup v1: the `cpu` controller's hierarchy directory name (e.g. `cpu,cpuacct`) and
    /// the levels from its root to this process's group, from `/proc/self/cgroup`'s `N:cpu,...:/a`.
    public static func cgroupV1CPULevels(procSelfCgroup text: String) -> (controller: String, levels: [String])? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, fields[1].split(separator: ",").contains("cpu") else { continue }
            var levels = [""]
            var current = ""
            for component in fields[2].split(separator: "/") {
                current += "/" + component
                levels.append(current)
            }
            return (String(fields[1]), levels)
        }
        return nil
    }

    /// CPUs in the `Cpus_allowed_list:` line of `/proc/self/status` (e.g. `0-3,8,10-11` is 7).
    public static func allowedCPUs(procSelfStatus text: String) -> Int? {
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return nil }
        return cpuListCount(String(line.dropFirst("Cpus_allowed_list:".count)))
    }

    /// The number of CPUs in a kernel CPU list such as `0-3,8`; nil when malformed.
    public static func cpuListCount(_ list: String) -> Int? {
        var n = 0
        for item in list.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let bounds = item.split(separator: "-")
            guard let lo = bounds.first.flatMap({ Int($0) }), bounds.count <= 2 else { return nil }
            let hi = bounds.count == 2 ? Int(bounds[1]) : lo
            guard let hi, hi >= lo else { return nil }
            n += hi - lo + 1
        }
        return n > 0 ? n : nil
    }
}
