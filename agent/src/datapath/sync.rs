//! Bringing a map in line with what it should hold, touching only the
//! entries that differ.

use std::collections::HashMap;

use aya::maps::MapError;

use super::*;

/// Brings `map` and its `mirror` to `desired` on the keys `in_scope`
/// selects: every new or changed entry is written first, and only then are
/// the entries no longer wanted removed, so an entry wanted before and after
/// is never missing in between. The mirror changes only after the kernel
/// accepted the change, so a failure is retried by the next sync. Returns how
/// many entries changed.
pub(super) fn diff_sync<M, K, V, S: std::hash::BuildHasher>(
    map: &mut M,
    mirror: &mut HashMap<K, V, S>,
    desired: &HashMap<K, V, S>,
    in_scope: impl Fn(&K) -> bool,
    write: impl Fn(&mut M, &K, &V) -> Result<(), MapError>,
    remove: impl Fn(&mut M, &K) -> Result<(), MapError>,
) -> Result<usize, MapError>
where
    K: Copy + Eq + std::hash::Hash,
    V: Copy + PartialEq,
{
    let mut changes = 0;
    for (k, v) in desired {
        if mirror.get(k) != Some(v) {
            write(map, k, v)?;
            mirror.insert(*k, *v);
            changes += 1;
        }
    }
    let gone: Vec<K> = mirror
        .keys()
        .filter(|k| in_scope(k) && !desired.contains_key(k))
        .copied()
        .collect();
    for k in gone {
        remove(map, &k)?;
        mirror.remove(&k);
        changes += 1;
    }
    Ok(changes)
}
