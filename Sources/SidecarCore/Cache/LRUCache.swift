/// A bounded least-recently-used map with a cost per entry (bytes, for the cache's hot tier).
/// Inserting beyond `capacity` evicts from the cold end. O(1) lookup, insert and eviction: a
/// dictionary of slot indices into an array-backed doubly linked list, with a free list, so
/// steady-state operation allocates nothing beyond the stored values. Pure and not thread-safe:
/// the owner serialises access.
public struct LRUCache<Key: Hashable, Value> {
    struct Node {
        var key: Key?
        var value: Value?
        var cost: Int
        var prev: Int
        var next: Int
    }

    private var index: [Key: Int] = [:]
    private var nodes: [Node] = []
    private var free: [Int] = []
    private var head = -1  // most recently used
    private var tail = -1  // least recently used
    public let capacity: Int
    public private(set) var totalCost = 0

    public init(capacity: Int) { self.capacity = capacity }

    public var count: Int { index.count }

    /// The value for `key`, which becomes the most recently used.
    public mutating func get(_ key: Key) -> Value? {
        guard let i = index[key] else { return nil }
        moveToFront(i)
        return nodes[i].value
    }

    /// The value without touching recency.
    public func peek(_ key: Key) -> Value? {
        index[key].flatMap { nodes[$0].value }
    }

    /// Inserts or replaces; returns false (and stores nothing) when `cost` alone exceeds capacity.
    @discardableResult
    public mutating func set(_ key: Key, _ value: Value, cost: Int) -> Bool {
        remove(key)
        guard cost <= capacity else { return false }
        while totalCost + cost > capacity, tail >= 0 { removeSlot(tail) }
        let node = Node(key: key, value: value, cost: cost, prev: -1, next: head)
        let i: Int
        if let f = free.popLast() { nodes[f] = node; i = f } else { nodes.append(node); i = nodes.count - 1 }
        if head >= 0 { nodes[head].prev = i }
        head = i
        if tail < 0 { tail = i }
        index[key] = i
        totalCost += cost
        return true
    }

    @discardableResult
    public mutating func remove(_ key: Key) -> Value? {
        guard let i = index[key] else { return nil }
        let v = nodes[i].value
        removeSlot(i)
        return v
    }

    /// Removes every entry for which `predicate` holds.
    public mutating func removeAll(where predicate: (Key, Value) -> Bool) {
        var i = head
        while i >= 0 {
            let next = nodes[i].next
            if let k = nodes[i].key, let v = nodes[i].value, predicate(k, v) { removeSlot(i) }
            i = next
        }
    }

    public mutating func removeAll() {
        index.removeAll()
        nodes.removeAll()
        free.removeAll()
        head = -1
        tail = -1
        totalCost = 0
    }

    /// Keys from most to least recently used (for tests).
    public var keysByRecency: [Key] {
        var out: [Key] = []
        var i = head
        while i >= 0 { if let k = nodes[i].key { out.append(k) }; i = nodes[i].next }
        return out
    }

    private mutating func unlink(_ i: Int) {
        let (p, n) = (nodes[i].prev, nodes[i].next)
        if p >= 0 { nodes[p].next = n } else { head = n }
        if n >= 0 { nodes[n].prev = p } else { tail = p }
    }

    private mutating func moveToFront(_ i: Int) {
        guard head != i else { return }
        unlink(i)
        nodes[i].prev = -1
        nodes[i].next = head
        if head >= 0 { nodes[head].prev = i }
        head = i
        if tail < 0 { tail = i }
    }

    private mutating func removeSlot(_ i: Int) {
        unlink(i)
        if let k = nodes[i].key { index.removeValue(forKey: k) }
        totalCost -= nodes[i].cost
        nodes[i] = Node(key: nil, value: nil, cost: 0, prev: -1, next: -1)
        free.append(i)
    }
}

extension LRUCache: Sendable where Key: Sendable, Value: Sendable {}
extension LRUCache.Node: Sendable where Key: Sendable, Value: Sendable {}
