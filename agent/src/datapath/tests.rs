use super::*;

#[test]
fn diff_sync_writes_before_it_removes_and_retries_failed_removals() {
    let mut ops: Vec<String> = Vec::new();
    let mut mirror: HashMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
    let desired: HashMap<u32, u32> = [(1, 11), (4, 40)].into();
    let failing_remove = |ops: &mut Vec<String>, k: &u32| {
        ops.push(format!("remove {k}"));
        if *k == 3 {
            Err(MapError::KeyNotFound)
        } else {
            Ok(())
        }
    };
    let result = diff_sync(
        &mut ops,
        &mut mirror,
        &desired,
        |k| *k != 99,
        |ops, k, v| {
            ops.push(format!("write {k}={v}"));
            Ok(())
        },
        failing_remove,
    );
    assert!(result.is_err(), "the failed removal is reported");
    let first_remove = ops
        .iter()
        .position(|o| o.starts_with("remove"))
        .expect("removes");
    assert!(
        ops[..first_remove].iter().all(|o| o.starts_with("write")),
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|o| o.starts_with("write")).count(),
        2,
        "{ops:?}"
    );
    assert!(
        mirror.contains_key(&3),
        "a key the kernel did not drop stays in the mirror: {mirror:?}"
    );

    let mut ops = Vec::new();
    let changes = diff_sync(
        &mut ops,
        &mut mirror,
        &desired,
        |_| true,
        |_, _, _| Ok(()),
        |ops: &mut Vec<String>, k| {
            ops.push(format!("remove {k}"));
            Ok(())
        },
    )
    .expect("second sync");
    assert!(ops.contains(&"remove 3".to_owned()), "retried: {ops:?}");
    assert_eq!(mirror, desired);
    assert!(changes >= 1);
}

/// The names the agent loads, attaches, pins and reads must be the ones
/// the kernel object defines: a map or program that exists only as a
/// string on one side fails here, not on a runner host.
#[test]
fn the_kernel_object_defines_exactly_the_shared_names() {
    let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
    let mut maps: Vec<&str> = object
        .maps
        .keys()
        .map(String::as_str)
        // The loader's own maps of the object's data sections.
        .filter(|name| !name.starts_with('.'))
        .collect();
    maps.sort_unstable();
    let mut want = names::IN_OBJECT.to_vec();
    want.sort_unstable();
    assert_eq!(maps, want, "maps in the object vs egret_common::maps");
    assert!(
        !want.contains(&names::RUNNERS),
        "the runner table is the agent's own"
    );
    let mut programs: Vec<&str> = object.programs.keys().map(String::as_str).collect();
    programs.sort_unstable();
    let mut want = PROGRAMS.to_vec();
    want.sort_unstable();
    assert_eq!(
        programs, want,
        "programs in the object vs egret_common::programs"
    );
}

#[test]
fn a_missing_program_is_reported_as_a_program() {
    let e = DatapathError::MissingProgram(egret_common::programs::EGRESS);
    assert_eq!(
        e.to_string(),
        "program egret_egress is missing from the kernel object"
    );
}
