import SidecarCore
import XCTest

/// The model and max_tokens a budget reserves for come from the whole body, read as the upstream reads it.
final class PricedRequestTests: XCTestCase {
    private func read(_ s: String) -> Result<PricedRequest, PricedRequest.Refusal> { PricedRequest.read(Array(s.utf8)) }

    func testTheModelIsFoundWhereverItIsAndEscapesAreDecoded() {
        let long = String(repeating: "x", count: 200_000)
        XCTAssertEqual(read(#"{"messages":[{"content":"\#(long)"}],"model":"gpt-4o"}"#), .success(.init(model: "gpt-4o", maxTokens: nil)))
        XCTAssertEqual(read(#"{"mod\u0065l":"gpt\u002d4o","max_tokens":5}"#), .success(.init(model: "gpt-4o", maxTokens: 5)))
        // A "model" inside a message is not the request's model.
        XCTAssertEqual(read(#"{"messages":[{"model":"cheap"}],"model":"gpt-4o"}"#), .success(.init(model: "gpt-4o", maxTokens: nil)))
    }

    func testTheLargestOutputLimitCountsInAnyNumberForm() {
        XCTAssertEqual(read(#"{"model":"m","max_tokens":1e3}"#), .success(.init(model: "m", maxTokens: 1_000)))
        XCTAssertEqual(read(#"{"model":"m","max_tokens":10,"max_completion_tokens":4096.5}"#), .success(.init(model: "m", maxTokens: 4_097)))
        XCTAssertEqual(read(#"{"model":"m","max_output_tokens":1e300}"#), .success(.init(model: "m", maxTokens: 1_000_000_000_000)))
        XCTAssertEqual(read(#"{"model":"m","max_tokens":-5}"#), .success(.init(model: "m", maxTokens: nil)))
    }

    func testAmbiguousBodiesAreRefusedAndNonJSONHasNoModel() {
        XCTAssertEqual(read(#"{"model":"cheap","messages":[],"model":"dear"}"#), .failure(.ambiguous))
        XCTAssertEqual(read(#"{"model":"cheap","mod\u0065l":"dear"}"#), .failure(.ambiguous))
        XCTAssertEqual(read("--boundary\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"), .success(.init(model: nil, maxTokens: nil)))
        XCTAssertEqual(read(""), .success(.init(model: nil, maxTokens: nil)))
        XCTAssertEqual(read(#"["model"]"#), .success(.init(model: nil, maxTokens: nil)))
    }
}
