import NIOCore
import SidecarCore

/// A provider with one prompt cache per deployment, as OpenAI and Anthropic keep them: a prompt
/// is cached after it is served, for `ttl` after its last use; a later prompt that begins with it
/// reads it from the cache, if it passes the minimum cacheable length. The shared system prompt
/// is a prefix of every conversation, so it is cached too.
struct ShadowProvider {
    let ttl: TimeAmount
    let minimumTokens: Int
    /// Per deployment: per conversation, the longest prompt cached (messages, tokens) and until when.
    private var conversations: [[Int: (messages: Int, tokens: Int, expires: NIODeadline)]]
    /// Per deployment: until when the system prompt alone is cached.
    private var system: [NIODeadline]

    init(deployments: Int, ttl: TimeAmount, minimumTokens: Int) {
        self.ttl = ttl
        self.minimumTokens = minimumTokens
        conversations = Array(repeating: [:], count: deployments)
        system = Array(repeating: .uptimeNanoseconds(0), count: deployments)
    }

    /// Serves conversation `c`'s prompt of `messages` messages (`tokens` in all, `systemTokens` of
    /// them the system prompt) on deployment `d`: the tokens read from the cache.
    mutating func serve(conversation c: Int, messages: Int, tokens: Int, systemTokens: Int, deployment d: Int, now: NIODeadline) -> Int {
        var cached = 0
        if system[d] > now, systemTokens >= minimumTokens { cached = systemTokens }
        if let e = conversations[d][c], e.expires > now, e.messages <= messages, e.tokens >= minimumTokens { cached = max(cached, e.tokens) }
        if tokens >= minimumTokens {
            conversations[d][c] = (messages, tokens, now + ttl)
        }
        if systemTokens >= minimumTokens { system[d] = now + ttl }
        return cached
    }
}

/// A simulated agent workload: conversations that arrive over an hour, each growing turn by turn
/// (a user message, the model's answer), with a think time between turns, over a group of
/// deployments. Seeded: every run is the same.
struct AgentWorkload {
    enum Routing {
        /// Weighted least-connections, as before affinity.
        case plain
        case affinity(PrefixAffinity.Configuration)
        /// Every request on deployment 0: the provider cache's best case.
        case single
    }

    struct Result {
        var requests = 0
        var promptTokens = 0
        var cachedTokens = 0
        var perDeployment: [Int]
        var verdicts: [PrefixAffinity.Verdict: Int] = [:]
        var tableSize = 0
        var hitRatio: Double { Double(cachedTokens) / Double(max(1, promptTokens)) }
        /// Input dollars at `price`: fresh tokens at the input price, cached ones at the cached price.
        func inputUSD(_ price: PriceTable.Price) -> Double {
            price.cost(ResponseInspector.Usage(promptTokens: Int64(promptTokens), completionTokens: 0, cachedTokens: Int64(cachedTokens)))
        }
        func share(_ i: Int) -> Double { Double(perDeployment[i]) / Double(max(1, requests)) }
    }

    var conversations = 600
    var weights = [1, 1, 1, 1]
    var seed: UInt64 = 7
    var systemTokens = 1_500
    var providerTTL: TimeAmount = .minutes(5)
    var arrivalWindow: TimeAmount = .minutes(60)

    /// A conversation's messages as a chat completions body. Message text is one byte per 16 tokens
    /// (a 64th of real text, to keep the run short), so `PromptPrefix` is given a 64th of the
    /// provider's minimum; the provider counts the real tokens.
    private func body(system: String, messages: [(role: String, text: String)]) -> CanonicalJSON.Value {
        let items = [CanonicalJSON.Value.object([("content", .string(system)), ("role", .string("system"))])]
            + messages.map { CanonicalJSON.Value.object([("content", .string($0.text)), ("role", .string($0.role))]) }
        return .object([("messages", .array(items)), ("model", .string("agent"))])
    }

    func run(_ routing: Routing) -> Result {
        var random = SplitMix64(seed: seed)
        // The router's own randomness (ties), apart, so every routing sees the same workload.
        var routerRandom = SplitMix64(seed: seed &+ 1)
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        let system = String(repeating: "s", count: systemTokens / 16)
        struct Conversation {
            var turnsLeft: Int
            var messages: [(role: String, text: String)] = []
            var tokens: Int
            var deployment = -1
        }
        var convs: [Conversation] = []
        // (time, conversation, finishing): finishing events end a request, the others send one.
        var events: [(at: Int64, c: Int, finishing: Bool)] = []
        func schedule(_ at: Int64, _ c: Int, _ finishing: Bool) {
            var lo = 0, hi = events.count
            while lo < hi { let mid = (lo + hi) / 2; if events[mid].at <= at { lo = mid + 1 } else { hi = mid } }
            events.insert((at, c, finishing), at: lo)
        }
        for c in 0..<conversations {
            convs.append(Conversation(turnsLeft: Int(random.next(upperBound: UInt64(37))) + 4, tokens: systemTokens))
            schedule(Int64(random.next(upperBound: UInt64(arrivalWindow.nanoseconds))), c, false)
        }
        var selector = DeploymentSelector(deployments: weights.map { .init(weight: $0) })
        var provider = ShadowProvider(deployments: weights.count, ttl: providerTTL, minimumTokens: 1024)
        var affinity: PrefixAffinity?
        if case .affinity(let configuration) = routing { affinity = PrefixAffinity(configuration: configuration) }
        var result = Result(perDeployment: Array(repeating: 0, count: weights.count))
        func seconds(_ lo: UInt64, _ hi: UInt64) -> Int64 { Int64(lo + random.next(upperBound: hi - lo + 1)) * 1_000_000_000 }
        while !events.isEmpty {
            let e = events.removeFirst()
            let now = t0 + .nanoseconds(e.at)
            if e.finishing {
                let answer = Int(random.next(upperBound: UInt64(551))) + 50
                convs[e.c].messages.append(("assistant", "c\(e.c)t\(convs[e.c].messages.count)" + String(repeating: "a", count: answer / 16)))
                convs[e.c].tokens += answer
                selector.finished(convs[e.c].deployment, .success(latency: .seconds(5)), now: now)
                convs[e.c].turnsLeft -= 1
                guard convs[e.c].turnsLeft > 0 else { continue }
                // Mostly an agent's quick next step; now and then a pause past the provider's TTL.
                let think = random.next(upperBound: UInt64(20)) == 0 ? seconds(360, 900) : seconds(2, 60)
                schedule(e.at + think, e.c, false)
                continue
            }
            let question = Int(random.next(upperBound: UInt64(351))) + 50
            convs[e.c].messages.append(("user", "c\(e.c)t\(convs[e.c].messages.count)" + String(repeating: "u", count: question / 16)))
            convs[e.c].tokens += question
            let d: Int
            switch routing {
            case .single:
                d = 0
            case .plain:
                d = selector.select(now: now, random: &routerRandom)!
            case .affinity:
                let prefix = PromptPrefix.of(body(system: system, messages: convs[e.c].messages), path: "/v1/chat/completions", group: "agent", minimumTokens: 1024 / 64)
                if let prefix {
                    let (i, verdict) = affinity!.select(prefix, selector: &selector, now: now, random: &routerRandom)!
                    result.verdicts[verdict, default: 0] += 1
                    d = i
                } else {
                    d = selector.select(now: now, random: &routerRandom)!
                }
            }
            if case .single = routing { _ = selector.select(now: now, excluding: Set(1..<weights.count), random: &routerRandom) }
            convs[e.c].deployment = d
            result.requests += 1
            result.perDeployment[d] += 1
            result.promptTokens += convs[e.c].tokens
            result.cachedTokens += provider.serve(conversation: e.c, messages: convs[e.c].messages.count, tokens: convs[e.c].tokens,
                                                  systemTokens: systemTokens, deployment: d, now: now)
            schedule(e.at + seconds(2, 20), e.c, true)
        }
        result.tableSize = affinity?.count ?? 0
        return result
    }
}
