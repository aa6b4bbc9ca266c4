import SidecarCore
import XCTest

/// The default thread count follows the CPUs the process may use, not the machine's cores.
final class CPUAllowanceTests: XCTestCase {
    func testTheSmallestOfAffinityAndEveryQuotaWins() {
        XCTAssertEqual(CPUAllowance.threads(affinity: nil, cpuMax: [], cfs: [], online: 8), 8)
        XCTAssertEqual(CPUAllowance.threads(affinity: 1, cpuMax: [], cfs: [], online: 8), 1, "taskset -c 0")
        XCTAssertEqual(CPUAllowance.threads(affinity: 8, cpuMax: ["max 100000\n", "150000 100000\n"], cfs: [], online: 8), 2, "CPUQuota=150%")
        XCTAssertEqual(CPUAllowance.threads(affinity: 8, cpuMax: ["50000 100000"], cfs: [], online: 8), 1, "half a CPU is still one thread")
        XCTAssertEqual(CPUAllowance.threads(affinity: 4, cpuMax: [], cfs: [("-1\n", "100000\n"), ("300000", "100000")], online: 8), 3, "cgroup v1")
        XCTAssertEqual(CPUAllowance.threads(affinity: 0, cpuMax: ["garbage"], cfs: [], online: 0), 1)
    }

    func testProcFilesAreParsed() {
        XCTAssertEqual(CPUAllowance.cpuListCount("0-3,8,10-11\n"), 7)
        XCTAssertNil(CPUAllowance.cpuListCount("3-1"))
        XCTAssertEqual(CPUAllowance.allowedCPUs(procSelfStatus: "Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n"), 2)
        XCTAssertEqual(CPUAllowance.cgroupV2Levels(procSelfCgroup: "0::/system.slice/llm-sidecar.service\n"),
                       ["", "/system.slice", "/system.slice/llm-sidecar.service"])
        XCTAssertEqual(CPUAllowance.cgroupV2Levels(procSelfCgroup: "0::/\n"), [""])
        let v1 = CPUAllowance.cgroupV1CPULevels(procSelfCgroup: "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n")
        XCTAssertEqual(v1?.controller, "cpu,cpuacct")
        XCTAssertEqual(v1?.levels, ["", "/docker", "/docker/abc"])
    }
}
