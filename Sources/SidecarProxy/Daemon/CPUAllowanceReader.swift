import Foundation
import SidecarCore

/// Reads what `CPUAllowance` needs on this machine: the affinity mask, and `cpu.max` (cgroup v2)
/// or `cpu.cfs_quota_us`/`cpu.cfs_period_us` (cgroup v1) of every cgroup level of this process.
enum CPUAllowanceReader {
    /// The default number of event-loop threads: the CPUs this process may use.
    static func defaultThreads() -> Int {
        let online = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let cgroup = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        var cpuMax: [String] = []
        for level in CPUAllowance.cgroupV2Levels(procSelfCgroup: cgroup) ?? [] {
            if let text = try? String(contentsOfFile: "/sys/fs/cgroup\(level)/cpu.max", encoding: .utf8) { cpuMax.append(text) }
        }
        var cfs: [(quota: String, period: String)] = []
        if let (controller, levels) = CPUAllowance.cgroupV1CPULevels(procSelfCgroup: cgroup) {
            for level in levels {
                let dir = "/sys/fs/cgroup/\(controller)\(level)"
                if let q = try? String(contentsOfFile: dir + "/cpu.cfs_quota_us", encoding: .utf8),
                   let p = try? String(contentsOfFile: dir + "/cpu.cfs_period_us", encoding: .utf8) {
                    cfs.append((q, p))
                }
            }
        }
        return CPUAllowance.threads(affinity: affinityCount(), cpuMax: cpuMax, cfs: cfs, online: online)
    }

    /// CPUs in this process's affinity mask, from `/proc/self/status` (`sched_getaffinity` is a
    /// GNU extension Swift's Glibc module does not export); nil if it cannot be read.
    static func affinityCount() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        return CPUAllowance.allowedCPUs(procSelfStatus: status)
    }
}
