//! Which `[key, range_end)` selects every key under a prefix.

/// The `(key, range_end)` of a Range, DeleteRange or Watch that covers every key starting with `prefix`.
///
/// etcd selects keys `key <= k < range_end`. For a prefix, `range_end` is the prefix with its last byte
/// that is below 0xff incremented and everything after it cut (`a/` -> `a0`, `a\xff` -> `b`). A prefix
/// of only 0xff bytes has no such successor: `range_end` is then `"\0"`, which etcd reads as "every key
/// from `key` on". The empty prefix means every key: `key = "\0"` (the smallest key; an empty key is
/// rejected with "key is not provided") and `range_end = "\0"`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return (prefix.to_vec(), end);
        }
        end.pop();
    }
    (prefix.to_vec(), vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_prefix_increments_last_byte() {
        assert_eq!(prefix_range(b"config/"), (b"config/".to_vec(), b"config0".to_vec()));
        assert_eq!(prefix_range(b"a"), (b"a".to_vec(), b"b".to_vec()));
    }

    #[test]
    fn trailing_ff_bytes_are_cut() {
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"a\x01\xff\xff"), (b"a\x01\xff\xff".to_vec(), b"a\x02".to_vec()));
    }

    #[test]
    fn all_ff_means_to_the_end() {
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
    }

    #[test]
    fn empty_prefix_is_everything() {
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn zero_byte_prefix() {
        assert_eq!(prefix_range(b"\x00"), (vec![0], vec![1]));
    }
}
