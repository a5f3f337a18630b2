//! Broker failover: the pipeline on a cluster of three Apache Kafka nodes of the test's
//! own (each broker and controller; topics at replication factor 3 with
//! `min.insync.replicas=2`) under a steady stream of signed webhooks with redeliveries.
//! The node leading the most partitions is SIGKILLed and restarted, then (in the long
//! form) every node is restarted in turn, then two nodes are down at once. What was
//! answered 200 must be in the log byte for byte, two nodes down must mean 503 with
//! `Retry-After` and never 200, and the consumers must finish exact without being
//! restarted.
//!
//! The suite runs the short form (1.5 minutes on this 2-core machine, 2.5 when it is
//! loaded); the rolling restart adds three node restarts (5 minutes in all, loaded), and
//! runs with
//! `cargo nextest run -p ipp-tests --run-ignored only -E 'test(failover::)'`.

use std::time::{Duration, Instant};

use ipp_tests::{
    faults::{self, Answers, Stack},
    kafka::KafkaCluster,
    pipeline::settle,
};

/// How long a restarted node may take to be back in every ISR.
const CATCH_UP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_failover_loses_nothing_acknowledged_and_the_consumers_resume_by_themselves() {
    failover(Scenario {
        rolling_restart: false,
        sessions: 1200,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long form (about 5 minutes): the suite runs the short one"]
async fn broker_failover_and_a_rolling_restart_lose_nothing_acknowledged() {
    failover(Scenario {
        rolling_restart: true,
        sessions: 2400,
    })
    .await;
}

struct Scenario {
    /// Restart every node in turn (a controlled shutdown each) after the crash.
    rolling_restart: bool,
    /// The workload's size: its stream (40 webhooks a second) must last the scenario.
    sessions: usize,
}

async fn failover(scenario: Scenario) {
    let test_started = Instant::now();
    let progress = |what: &str| eprintln!("failover: {:>6.1?} {what}", test_started.elapsed());
    let mut cluster = KafkaCluster::start(3).await;
    progress("cluster up");
    let cluster_up = test_started.elapsed();
    let database = ipp_tests::db::TestDatabase::create().await;
    let stack = Stack::start(&cluster.brokers(), 3, database.url()).await;
    let (workload, deliveries, stream) = stack
        .stream_workload(scenario.sessions, 20261202, 40.0, 64, 200)
        .await;
    progress("stream flowing");

    // 1. A crash of the node that leads the most partitions.
    let (victim, led) = cluster.busiest_leader().await;
    let before = cluster.partitions().await.expect("metadata");
    let orphaned: Vec<(String, i32)> = before
        .iter()
        .filter(|p| p.leader == victim)
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let acknowledged_before = stream.acknowledged();
    let killed_at = Instant::now();
    cluster.kill(victim);
    // New leaders for everything it led, as the cluster's metadata says.
    let deadline = killed_at + Duration::from_secs(60);
    loop {
        let partitions = cluster.partitions().await;
        let moved = partitions.as_ref().is_ok_and(|partitions| {
            orphaned.iter().all(|(topic, partition)| {
                partitions.iter().any(|p| {
                    &p.topic == topic
                        && p.partition == *partition
                        && p.leader >= 0
                        && p.leader != victim
                })
            })
        });
        if moved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leaders 60 s after node {victim} was killed: {partitions:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leaders_after = killed_at.elapsed();
    progress(&format!("node {victim} killed, new leaders"));
    // Webhooks are acknowledged again with one node down: 300 more after the election.
    stream
        .wait_acknowledged(stream.acknowledged() + 300, Duration::from_secs(60))
        .await;
    let answers_one_down = stream.answers();
    let answered_one_down = answers_one_down.within(killed_at, Instant::now());
    let statuses_one_down = Answers::by_status(&answered_one_down);
    let last_failure_after = answered_one_down
        .iter()
        .filter(|a| a.status != Some(200))
        .map(|a| a.answered_at - killed_at)
        .max()
        .unwrap_or_default();
    let slowest_200_one_down = Answers::slowest_200(&answered_one_down);
    cluster.restart(&[victim]).await;
    progress(&format!("node {victim} restarted"));
    cluster.wait_fully_replicated(CATCH_UP).await;
    progress("fully replicated");
    let crash_recovered_after = killed_at.elapsed();

    // 2. A rolling restart: each node in turn, controlled shutdown, back in every ISR.
    let rolling_started = Instant::now();
    let rolling_nodes = if scenario.rolling_restart {
        cluster.node_ids().collect()
    } else {
        Vec::new()
    };
    for id in rolling_nodes {
        cluster.terminate(id, Duration::from_secs(60)).await;
        progress(&format!("node {id} stopped"));
        cluster.restart(&[id]).await;
        progress(&format!("node {id} restarted"));
        cluster.wait_fully_replicated(CATCH_UP).await;
        progress("fully replicated");
    }
    let rolling_took = rolling_started.elapsed();
    let answered_rolling = stream.answers();
    let answered_rolling = answered_rolling.within(rolling_started, Instant::now());
    let statuses_rolling = Answers::by_status(&answered_rolling);

    // 3. Two of three nodes down: acks=all with min.insync.replicas=2 cannot be met.
    let (first, second) = (1, 2);
    cluster.kill(first);
    cluster.kill(second);
    let two_down = Instant::now();
    progress("two nodes killed");
    let deadline = two_down + Duration::from_secs(60);
    loop {
        let answers = stream.answers();
        let failed = answers
            .within(two_down, Instant::now())
            .iter()
            .filter(|a| a.status == Some(503))
            .count();
        if failed >= 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "with two nodes down, 20 webhooks were not answered 503 within 60 s: {:?}, {} of {} \
             acknowledged",
            Answers::by_status(&answers.within(two_down, Instant::now())),
            stream.acknowledged(),
            stream.total
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let restarting = Instant::now();
    let answers = stream.answers();
    let answered_two_down = answers.within(two_down, restarting);
    for answer in &answered_two_down {
        assert_eq!(
            answer.status,
            Some(503),
            "with two of three nodes down, {} was answered {:?}",
            deliveries[answer.delivery].event_id,
            answer.status
        );
        assert!(
            answer.retry_after.is_some(),
            "a 503 without Retry-After: {answer:?}"
        );
    }
    let statuses_two_down = Answers::by_status(&answered_two_down);
    cluster.restart(&[first, second]).await;
    progress("two nodes restarted");
    cluster.wait_fully_replicated(CATCH_UP).await;
    progress("fully replicated");
    let two_down_recovered_after = restarting.elapsed();

    // The rest of the stream, and the end state.
    let scenario_took = test_started.elapsed();
    let answers = stream.finish(Duration::from_secs(300)).await;
    progress("stream finished");
    assert_eq!(
        answers.acknowledged().len(),
        deliveries.len(),
        "every delivery was answered 200 in the end"
    );
    stack.assert_log_holds(&deliveries, &answers);
    let pool = faults::pool(database.url()).await;
    settle(&pool, &[&workload], Duration::from_secs(180)).await;
    progress("settled");
    faults::assert_exact_and_captured_once(&pool, &workload, &stack.sim).await;
    stack.assert_running();

    eprintln!(
        "failover timings: cluster up in {cluster_up:?}; node {victim} (leading {led} \
         partitions) SIGKILLed: new leaders after {new_leaders_after:?}, last failed \
         answer {last_failure_after:?} after the kill, slowest 200 {slowest_200_one_down:?}, \
         answers {statuses_one_down:?} ({acknowledged_before} acknowledged before); restarted and in sync {crash_recovered_after:?} after the \
         kill; rolling restart {rolling_took:?} (answers {statuses_rolling:?}); two down: \
         answers {statuses_two_down:?}, back in sync {two_down_recovered_after:?} after \
         the restart; scenario {scenario_took:?}, whole test {:?}; {} deliveries, {} \
         answers",
        test_started.elapsed(),
        deliveries.len(),
        answers.0.len(),
    );
}
