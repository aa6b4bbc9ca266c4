import SidecarCore
import XCTest

/// The prefix rule per dialect (PromptPrefix; docs/routing.md, "Prompt-cache affinity").
final class PromptPrefixTests: XCTestCase {
    let long = String(repeating: "x", count: 5_000)  // past 1,024 tokens at 4 bytes a token

    func prefix(_ json: String, _ path: String = "/v1/chat/completions", group: String = "g") -> PromptPrefix? {
        PromptPrefix.of(CanonicalJSON.parse(Array(json.utf8))!, path: path, group: group)
    }

    func testAGrowingConversationBeginsWithItsPreviousTurn() {
        let turn1 = #"{"model":"g","messages":[{"role":"system","content":"\#(long)"},{"role":"user","content":"hi"}]}"#
        let turn2 = #"{ "messages" : [{"content":"\#(long)","role":"system"},{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":"more"}], "model":"g"}"#
        let p1 = prefix(turn1)!, p2 = prefix(turn2)!
        XCTAssertEqual(p1.candidates.count, 2, "after the system message and after the user's")
        XCTAssertEqual(p2.candidates.count, 4)
        XCTAssertTrue(p2.candidates.contains(p1.longest), "key order and spacing do not matter")
        XCTAssertNotEqual(p2.longest, p1.longest)
        XCTAssertNotEqual(prefix(turn1, group: "other")!.longest, p1.longest, "another group is another cache")
    }

    func testShortPromptsAndUncachedEndpointsHaveNone() {
        XCTAssertNil(prefix(#"{"model":"g","messages":[{"role":"user","content":"hi"}]}"#))
        XCTAssertNil(prefix(#"{"model":"g","input":"\#(long)"}"#, "/v1/embeddings"))
        // Tools count towards the minimum and are part of the prefix.
        let tools = #"{"model":"g","tools":[{"type":"function","function":{"name":"f","description":"\#(long)"}}],"messages":[{"role":"user","content":"hi"}]}"#
        XCTAssertEqual(prefix(tools)?.candidates.count, 1)
        XCTAssertNotEqual(prefix(tools)?.longest, prefix(tools.replacingOccurrences(of: #""name":"f""#, with: #""name":"h""#))?.longest)
    }

    func testPromptCacheKeyIsTheIdentity() {
        let a = prefix(#"{"model":"g","prompt_cache_key":"user-7","messages":[{"role":"user","content":"hi"}]}"#)
        let b = prefix(#"{"model":"g","prompt_cache_key":"user-7","messages":[{"role":"user","content":"\#(long)"}]}"#)
        XCTAssertEqual(a?.candidates.count, 1)
        XCTAssertEqual(a, b)
        XCTAssertEqual(prefix(#"{"model":"g","prompt_cache_key":"user-7","input":"hi"}"#, "/v1/responses"), a)
    }

    func testAnthropicCachesOnlyUpToItsLastBreakpoint() {
        let path = "/v1/messages"
        XCTAssertNil(prefix(#"{"model":"g","system":"\#(long)","messages":[{"role":"user","content":"hi"}]}"#, path),
                     "without cache_control Anthropic caches nothing")
        let systemOnly = #"{"model":"g","system":[{"type":"text","text":"\#(long)","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"a"}]}"#
        let systemOnly2 = systemOnly.replacingOccurrences(of: #""content":"a""#, with: #""content":"b""#)
        XCTAssertEqual(prefix(systemOnly, path)?.candidates.count, 1)
        XCTAssertEqual(prefix(systemOnly, path), prefix(systemOnly2, path), "the same cached system prompt, whatever follows")
        // An agent's breakpoint on its newest message moves every turn: the earlier turn's is
        // still among the candidates.
        func msg(_ role: String, _ text: String, breakpoint: Bool) -> String {
            #"{"role":"\#(role)","content":[{"type":"text","text":"\#(text)"\#(breakpoint ? #","cache_control":{"type":"ephemeral"}"# : "")}]}"#
        }
        let turn1 = #"{"model":"g","system":"\#(long)","messages":[\#(msg("user", "q1", breakpoint: true))]}"#
        let turn2 = #"{"model":"g","system":"\#(long)","messages":[\#(msg("user", "q1", breakpoint: false)),\#(msg("assistant", "a1", breakpoint: false)),\#(msg("user", "q2", breakpoint: true))]}"#
        let turn2Early = #"{"model":"g","system":"\#(long)","messages":[\#(msg("user", "q1", breakpoint: false)),\#(msg("assistant", "a1", breakpoint: false)),\#(msg("user", "q2", breakpoint: false))]}"#
        XCTAssertNil(prefix(turn2Early, path))
        let p1 = prefix(turn1, path)!, p2 = prefix(turn2, path)!
        XCTAssertEqual(p2.candidates.count, 3)
        XCTAssertTrue(p2.candidates.contains(p1.longest), "cache_control is not part of the prompt")
    }

    func testGeminiAndCompletions() {
        let gemini = #"{"systemInstruction":{"parts":[{"text":"\#(long)"}]},"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#
        XCTAssertEqual(prefix(gemini, "/v1beta/models/gemini-2.5-flash:generateContent")?.candidates.count, 1)
        let named = #"{"cachedContent":"cachedContents/abc","contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#
        XCTAssertEqual(prefix(named, "/v1beta/models/gemini-2.5-flash:streamGenerateContent")?.candidates.count, 1)
        XCTAssertEqual(prefix(#"{"model":"g","prompt":"\#(long)"}"#, "/v1/completions")?.candidates.count, 1)
        XCTAssertEqual(prefix(#"{"model":"g","messages":[{"role":"user","content":"\#(long)"}]}"#, "/openai/deployments/d/chat/completions")?.candidates.count, 1)
    }

    func testCandidatesAreBounded() {
        let many = (0..<100).map { #"{"role":"user","content":"m\#($0)"}"# }.joined(separator: ",")
        let p = prefix(#"{"model":"g","messages":[{"role":"system","content":"\#(long)"},\#(many)]}"#)!
        XCTAssertEqual(p.candidates.count, PromptPrefix.maxCandidates)
    }
}
