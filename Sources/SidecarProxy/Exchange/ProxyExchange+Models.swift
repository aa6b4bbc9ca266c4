import DequeModule
import Logging
import NIOCore
import NIOHTTP1
import SidecarCore
import SidecarStore
import SidecarTLS
import Foundation

/// `GET /v1/models` with `[[models]]` groups: the groups merged into the upstream's list.
extension ProxyExchange {
    // MARK: GET /v1/models with [[models]] groups


    /// `GET /v1/models` lists the configured groups, merged into the default upstream's list
    /// (answered locally when there is no default upstream).
    func listModelsIfNeeded() -> Bool {
        guard clientHead.method == .GET, Self.barePath(clientHead.uri) == "/v1/models", !routes.isEmpty else { return false }
        let names = routes.keys.sorted()
        if defaultGroup != nil {
            modelsToMerge = names
            // The list is read and rewritten here: ask for it unencoded.
            upstreamHead.headers.remove(name: "accept-encoding")
            return false
        }
        machine.answeredLocally()
        // Our own list of plain strings always serialises.
        let body = ByteBuffer(bytes: Self.mergeModels(names, into: nil) ?? Array(#"{"object":"list","data":[]}"#.utf8))
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        if !downstream.keepAlive { headers.add(name: "connection", value: "close") }
        downstream.writeResponseHead(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))
        downstream.writeResponseBody(body)
        downstream.finishResponse(trailers: nil)
        return true
    }

    /// An OpenAI model list with `names` added (those not already listed), after `upstream`'s;
    /// nil when `upstream` is not a JSON object with a `data` array (the caller answers 502).
    static func mergeModels(_ names: [String], into upstream: [UInt8]?) -> [UInt8]? {
        var object: [String: Any] = ["object": "list"]
        if let upstream {
            guard let parsed = try? JSONSerialization.jsonObject(with: Data(upstream)) as? [String: Any],
                  parsed["data"] is [[String: Any]] else { return nil }
            object = parsed
        }
        var data = object["data"] as? [[String: Any]] ?? []
        let present = Set(data.compactMap { $0["id"] as? String })
        for name in names where !present.contains(name) {
            data.append(["id": name, "object": "model", "created": 0, "owned_by": "llm-sidecar"])
        }
        object["data"] = data
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])).map(Array.init)
    }
}
