use super::*;

const GITLAB: &[u8] = b"HOME=/home/gitlab-runner\0CI_JOB_ID=4242\0CI_JOB_NAME=test\0\
CI_JOB_URL=https://gitlab.example.com/group/proj/-/jobs/4242\0CI_PROJECT_PATH=group/proj\0\
CI_PIPELINE_ID=77\0CI_COMMIT_REF_NAME=main\0PATH=/usr/bin\0";

const GITHUB: &[u8] = b"GITHUB_RUN_ID=9001\0GITHUB_JOB=build\0GITHUB_REPOSITORY=acme/widgets\0\
GITHUB_SERVER_URL=https://github.example.com/\0GITHUB_REF_NAME=main\0";

#[test]
fn gitlab_variables_name_the_job() {
    let job = from_environ(GITLAB).expect("a job");
    assert_eq!(
        job,
        JobIdentity {
            ci: "gitlab".into(),
            id: "4242".into(),
            name: Some("test".into()),
            url: Some("https://gitlab.example.com/group/proj/-/jobs/4242".into()),
            project: Some("group/proj".into()),
            pipeline: Some("77".into()),
            git_ref: Some("main".into()),
            source: Source::Environ,
        }
    );
    let json = serde_json::to_value(&job).expect("json");
    assert_eq!(json["ref"], "main");
    assert_eq!(json["source"], "environ");
}

#[test]
fn github_variables_name_the_run_and_its_url() {
    let job = from_environ(GITHUB).expect("a job");
    assert_eq!(job.ci, "github");
    assert_eq!(job.id, "9001");
    assert_eq!(job.name.as_deref(), Some("build"));
    assert_eq!(job.project.as_deref(), Some("acme/widgets"));
    assert_eq!(
        job.url.as_deref(),
        Some("https://github.example.com/acme/widgets/actions/runs/9001")
    );
}

#[test]
fn no_ci_variables_no_job() {
    assert_eq!(
        from_environ(b"PATH=/bin\0HOME=/\0CI=true\0CI_JOB_ID=\0"),
        None
    );
    assert_eq!(from_environ(b""), None);
    assert_eq!(from_environ(&[0xff, 0xfe, 0, b'=', 0]), None);
}

/// A fake /proc: (pid, parent, cgroup, environ).
fn fake_proc(procs: &[(u32, u32, &str, &[u8])]) -> (tempfile::TempDir, ProcFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (pid, parent, cgroup, environ) in procs {
        let p = dir.path().join(pid.to_string());
        std::fs::create_dir(&p).expect("mkdir");
        std::fs::write(p.join("status"), format!("Name:\tx\nPPid:\t{parent}\n")).expect("status");
        std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).expect("cgroup");
        std::fs::write(p.join("environ"), environ).expect("environ");
    }
    let proc = ProcFs::at(dir.path());
    (dir, proc)
}

#[test]
fn a_process_that_dropped_its_environment_is_named_after_its_parent() {
    let (_dir, proc) = fake_proc(&[
        (10, 1, "/runners/ci", GITLAB),
        (20, 10, "/runners/ci/step", b"PATH=/bin\0"),
        (30, 20, "/runners/ci/step", b""),
    ]);
    let job = job_of(&proc, 30, "/runners/ci").expect("the parent's job");
    assert_eq!(job.id, "4242");
}

#[test]
fn the_walk_stops_at_the_runners_cgroup() {
    // The runner service itself (outside the runner's cgroup) carries CI
    // variables of its own: they must not name the job's process.
    let (_dir, proc) = fake_proc(&[
        (10, 1, "/system.slice/runner.service", GITHUB),
        (20, 10, "/runners/ci", b"PATH=/bin\0"),
    ]);
    assert_eq!(job_of(&proc, 20, "/runners/ci"), None);
    // A cgroup that merely shares the prefix is not inside.
    let (_dir, proc) = fake_proc(&[(20, 1, "/runners/ci-other", GITHUB)]);
    assert_eq!(job_of(&proc, 20, "/runners/ci"), None);
    assert_eq!(job_of(&proc, 999, "/runners/ci"), None, "a process gone");
}

#[test]
fn a_gone_process_is_named_after_its_cgroups_only_job() {
    let cache = JobCache::default();
    let now = Instant::now();
    let a = from_environ(GITLAB).expect("a");
    let b = from_environ(GITHUB).expect("b");
    cache.remember(10, 7, Some(a.clone()), now);
    assert_eq!(cache.of_cgroup(7, now), Some(a.clone()));
    assert_eq!(cache.cached(10, 7, now), Some(Some(a.clone())));
    assert_eq!(cache.cached(11, 7, now), None, "not looked up yet");
    // A second job in the same cgroup: a gone process can no longer be
    // told apart.
    cache.remember(11, 7, Some(b), now);
    assert_eq!(cache.of_cgroup(7, now), None);
    // Memories fade.
    let later = now + CACHE_FOR + Duration::from_secs(1);
    assert_eq!(cache.cached(10, 7, later), None);
    assert_eq!(cache.of_cgroup(7, later), None);
}

#[test]
fn recent_jobs_keep_the_latest_and_count_denials() {
    let recent = RecentJobs::default();
    let mut job = from_environ(GITLAB).expect("a");
    recent.note("ci", &job, "t1");
    recent.note("ci", &job, "t2");
    let jobs = recent.of("ci");
    assert_eq!(
        (jobs.len(), jobs[0].denials, jobs[0].last.as_str()),
        (1, 2, "t2")
    );
    for i in 0..recent::JOBS_KEPT + 3 {
        job.id = format!("j{i}");
        recent.note("ci", &job, "t");
    }
    let jobs = recent.of("ci");
    assert_eq!(jobs.len(), recent::JOBS_KEPT);
    assert_eq!(jobs.last().map(|j| j.job.id.as_str()), Some("j12"));
    assert!(recent.of("other").is_empty());
}
