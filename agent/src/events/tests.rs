use super::*;

fn event() -> Event {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    Event {
        time_ns: 1_000,
        cgroup_id: 77,
        pid: 4242,
        runner: 1,
        port: 80,
        family: 6,
        proto: proto::IPPROTO_TCP,
        reason: reason::METADATA,
        action: action::DENY,
        hook: hook::CONNECT6,
        sock_type: 0,
        addr: addr::mapped_v4([169, 254, 169, 254]),
        comm,
    }
}

#[test]
fn a_mapped_destination_on_a_v6_socket_is_shown_as_given() {
    let enricher = Enricher::new(
        PathBuf::from("/nonexistent"),
        SharedLearning::default(),
        Arc::default(),
    );
    enricher.set_runners(HashMap::from([(
        1,
        ("ci".to_owned(), PathBuf::from("/nonexistent")),
    )]));
    let r = enrich(
        &event(),
        &enricher,
        SystemTime::UNIX_EPOCH + Duration::from_secs(10),
        1_000,
    );
    assert_eq!(r.dst.as_deref(), Some("::ffff:169.254.169.254"));
    assert_eq!(r.family, "ipv6");
    assert_eq!(r.runner, "ci");
    assert_eq!(r.comm, "curl");
    assert_eq!(r.reason, "metadata");
    assert_eq!(r.action, "deny");
    assert_eq!(r.time, "1970-01-01T00:00:10.000Z");
}

/// The walk of the cgroup tree is the slow part of naming an event: it
/// must run with no lock held, least of all the learned addresses' one,
/// which the DNS proxy takes before it releases an answer.
#[test]
fn the_cgroup_walk_holds_no_lock() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let learning = SharedLearning::default();
    let walks = Arc::new(AtomicUsize::new(0));
    let enricher = Arc::new_cyclic(|me: &std::sync::Weak<Enricher>| {
        let (me, learning, walks) = (me.clone(), learning.clone(), walks.clone());
        let mut enricher = Enricher::new(
            PathBuf::from("/nonexistent"),
            learning.clone(),
            Arc::default(),
        );
        enricher.walk = Box::new(move |_, _, _| {
            walks.fetch_add(1, Ordering::SeqCst);
            let me = me.upgrade().expect("the enricher");
            assert!(learning.try_lock().is_ok(), "learned addresses locked");
            assert!(me.runners.try_write().is_ok(), "runners locked");
            assert!(me.cgroup_paths.try_lock().is_ok(), "cgroup cache locked");
            Some("/egret.slice/ci/job-1".to_owned())
        });
        enricher
    });
    enricher.set_runners(HashMap::from([(
        1,
        ("ci".to_owned(), PathBuf::from("/nonexistent")),
    )]));
    for _ in 0..2 {
        let r = enrich(&event(), &enricher, SystemTime::UNIX_EPOCH, 1_000);
        assert_eq!(r.cgroup.as_deref(), Some("/egret.slice/ci/job-1"));
    }
    assert_eq!(walks.load(Ordering::SeqCst), 1, "the second time is cached");
}

#[test]
fn a_flood_is_held_back_per_runner_and_counted() {
    let limit = flood_limit();
    let now = std::time::Instant::now();
    let admitted = (0..EVENTS_PER_SECOND + 10)
        .filter(|_| limit.allow(1, now))
        .count();
    assert_eq!(admitted, EVENTS_PER_SECOND as usize);
    assert!(limit.allow(2, now), "another runner has its own budget");
    assert_eq!(limit.take_refused(1), 10);
    assert_eq!(limit.take_refused(1), 0, "taken once");
    assert!(limit.allow(1, now + Duration::from_secs(1)), "a new second");
}

#[test]
fn v4_events_show_dotted_quads() {
    let mut ev = event();
    ev.family = 4;
    ev.hook = hook::CONNECT4;
    assert_eq!(destination(&ev).to_string(), "169.254.169.254");
}

#[test]
fn short_records_are_rejected() {
    assert!(decode(&[0u8; 10]).is_none());
}
