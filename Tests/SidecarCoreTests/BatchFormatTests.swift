import Foundation
import SidecarCore
import XCTest

final class BatchFormatTests: XCTestCase {
    func testInputLinesAreCheckedAndOutputLinesFollowTheBatchAPI() throws {
        guard case .success(let r) = BatchFormat.parse(#"{"custom_id":"a","method":"post","url":"/v1/embeddings","body":{"input":"x"}}"#) else {
            return XCTFail("a valid line was refused")
        }
        XCTAssertEqual(r.method, "POST")
        XCTAssertEqual(r.url, "/v1/embeddings")
        XCTAssertEqual(r.body.map { String(decoding: $0, as: UTF8.self) }, #"{"input":"x"}"#)
        for (bad, why) in [("[]", "not a JSON object"), (#"{"method":"POST","url":"/v1/x","body":{}}"#, "custom_id is missing or not a string"),
                           (#"{"custom_id":"a","method":"PUT","url":"/v1/x"}"#, "method must be POST, GET or DELETE"),
                           (#"{"custom_id":"a","method":"POST","url":"http://x/v1/x","body":{}}"#, "url must be a /v1/... path"),
                           (#"{"custom_id":"a","method":"POST","url":"/v1/x"}"#, "a POST needs a body")] {
            guard case .failure(let e) = BatchFormat.parse(Substring(bad)) else { XCTFail(bad); continue }
            XCTAssertEqual(e.reason, why)
        }
        let line = BatchFormat.outputLine(customID: "a", status: 200, requestID: "req_1", body: Array(#"{"ok":true}"#.utf8), error: nil)
        let o = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        XCTAssertEqual(((o["response"] as? [String: Any])?["body"] as? [String: Any])?["ok"] as? Bool, true)
        XCTAssertEqual((o["response"] as? [String: Any])?["request_id"] as? String, "req_1")
        let failed = BatchFormat.outputLine(customID: "b", status: nil, requestID: nil, body: nil, error: ("request_failed", "refused"))
        XCTAssertTrue(failed.contains(#""response":null"#), failed)
    }

    func testResumeKeepsWholeLinesAndCutsAPartialOne() {
        let a = BatchFormat.outputLine(customID: "a", status: 200, requestID: nil, body: Array("{}".utf8), error: nil)
        let b = BatchFormat.outputLine(customID: "b", status: 200, requestID: nil, body: Array("{}".utf8), error: nil)
        let text = Array((a + b + #"{"id":"batch_req_x","custom_"#).utf8)
        let (ids, length) = BatchFormat.completed(in: text)
        XCTAssertEqual(ids, ["a", "b"])
        XCTAssertEqual(length, (a + b).utf8.count)
    }
}
