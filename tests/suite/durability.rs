//! The embedded SQLite store keeps what it acknowledged: a Jisu process is SIGKILLed again
//! and again in the middle of a write load; after each restart every acknowledged write is
//! there and the store opens cleanly.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::common::{Binary, Calls};
use jisu::{
    pb::{CreateUserRequest, GetUserRequest},
    security::certs,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    let data = dir.path().join("data");
    let mut acknowledged: Vec<(String, String)> = Vec::new();
    const CYCLES: usize = 5;
    for cycle in 0..CYCLES {
        let mut server = Binary::default().certs(&certs_dir).data_dir(&data).start();
        let client = server.client("users:read users:write").await;
        // Everything acknowledged so far is there, and the counter has not gone back.
        for (id, email) in &acknowledged {
            let user = client
                .users()
                .get_user(GetUserRequest {
                    user_id: id.clone(),
                })
                .await
                .unwrap_or_else(|s| panic!("cycle {cycle}: acknowledged {id} lost: {s:?}"))
                .into_inner();
            assert_eq!(&user.email, email);
        }
        // Write from 4 tasks; kill the process while they are at it.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (client, stop) = (client.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let email = format!("c{cycle}w{w}n{n}@durable.dev");
                        let r = client
                            .users()
                            .create_user(CreateUserRequest {
                                name: "Durable".into(),
                                email: email.clone(),
                                phone: String::new(),
                            })
                            .await;
                        match r {
                            Ok(user) => acked.push((user.into_inner().id, email)),
                            Err(_) => break, // the process is gone: not acknowledged
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            acknowledged.extend(w.await.unwrap());
        }
    }
    // A last start: the store opens cleanly and holds every acknowledged write once.
    let server = Binary::default().certs(&certs_dir).data_dir(&data).start();
    let client = server.client("users:read").await;
    let mut ids = std::collections::HashSet::new();
    for (id, email) in &acknowledged {
        assert!(ids.insert(id.clone()), "id {id} acknowledged twice");
        let user = client
            .users()
            .get_user(GetUserRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap_or_else(|s| panic!("acknowledged {id} lost: {s:?}"))
            .into_inner();
        assert_eq!(&user.email, email);
    }
    println!(
        "durability: {CYCLES} SIGKILL cycles, {} acknowledged writes checked after each restart",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 20, "the load wrote something");
}

#[tokio::test]
async fn demo_data_seeds_only_an_empty_database() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    certs::init(&certs_dir, &[], false).unwrap();
    let data = dir.path().join("data");
    let first = Binary::default().certs(&certs_dir).data_dir(&data).start();
    let created = first
        .client("users:write")
        .await
        .create_user("After demo", "after@demo.dev")
        .await
        .unwrap();
    assert_eq!(created.id, "USER0101");
    drop(first);
    // Restarted with --demo-data again (Binary always passes it): nothing is re-seeded.
    let second = Binary::default().certs(&certs_dir).data_dir(&data).start();
    let next = second
        .client("users:write")
        .await
        .create_user("Next", "next@demo.dev")
        .await
        .unwrap();
    assert_eq!(
        next.id, "USER0102",
        "the counter continues; no second demo set"
    );
}
