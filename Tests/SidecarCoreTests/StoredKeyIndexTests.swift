import SidecarCore
import XCTest

/// The key index only ever answers "certainly not stored" for keys it knows are not stored.
final class StoredKeyIndexTests: XCTestCase {
    func testUnknownUntilRebuiltThenASupersetOfWhatIsStored() {
        var index = StoredKeyIndex()
        XCTAssertTrue(index.mayContain(42), "before the first read of the database: maybe")
        index.insert(42)
        XCTAssertNil(index.count, "an insert does not make an unknown index known")
        index.replaceAll([1, 2, 3])
        XCTAssertEqual(index.count, 3)
        XCTAssertFalse(index.mayContain(42))
        XCTAssertTrue(index.mayContain(2))
        index.insert(42)
        XCTAssertTrue(index.mayContain(42))
        index.replaceAll([])
        XCTAssertFalse(index.mayContain(42), "a rebuild drops what the database no longer holds")
    }

    /// Checked against a shadow model (an exact set of stored keys) over random operations:
    /// never a false "not stored".
    func testNeverSaysNotStoredForAStoredKey() {
        var rng = SplitMix64(seed: 7)
        var index = StoredKeyIndex()
        var stored: Set<UInt64> = []
        for _ in 0..<10_000 {
            let key = rng.next() % 500
            switch rng.next() % 4 {
            case 0, 1:
                stored.insert(key)
                index.insert(key)
            case 2:
                stored.remove(key)  // deleted in the database; the index learns at the next rebuild
            default:
                index.replaceAll(Array(stored))
            }
            for k in stored { XCTAssertTrue(index.mayContain(k)) }
        }
    }
}

