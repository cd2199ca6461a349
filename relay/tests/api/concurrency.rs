//! Readers paging with `after` never miss a message, even while many writers append.

use std::time::Duration;

use crate::common::*;

const WRITERS: usize = 8;
const MESSAGES_PER_WRITER: usize = 500;
const READERS: usize = 4;
const TOTAL: u64 = (WRITERS * MESSAGES_PER_WRITER) as u64;

backend_tests! {
    async fn readers_paging_under_concurrent_writers_see_every_seq_once_in_order(db: Db) {
        let relay = db.start(&["--rate-limit-per-second", "0"]).await;
        let owner = relay.register("owner").await;
        let mut writers = vec![owner.clone()];
        let mut names = Vec::new();
        for i in 1..WRITERS {
            let name = format!("writer{i}");
            writers.push(relay.register(&name).await);
            names.push(name);
        }
        let mut readers = Vec::new();
        for i in 0..READERS {
            let name = format!("reader{i}");
            readers.push(relay.register(&name).await);
            names.push(name);
        }
        let members: Vec<&str> = names.iter().map(String::as_str).collect();
        owner.create_group(&gid(1), &members).await;

        let reader_tasks: Vec<_> = readers
            .into_iter()
            .map(|reader| {
                tokio::spawn(async move {
                    let mut seen = Vec::with_capacity(TOTAL as usize);
                    let mut after = 0;
                    while after < TOTAL {
                        let page = reader.messages("owner", &gid(1), after, Some(1000)).await;
                        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
                        let expected: Vec<u64> = (after + 1..=after + seqs.len() as u64).collect();
                        assert_eq!(seqs, expected, "{} read a gap or a repeat after seq {after}", reader.id);
                        seen.extend(seqs);
                        after = page.next_after;
                        if page.messages.is_empty() {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    seen
                })
            })
            .collect();

        let writer_tasks: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(w, writer)| {
                tokio::spawn(async move {
                    let mut seqs = Vec::with_capacity(MESSAGES_PER_WRITER);
                    for i in 0..MESSAGES_PER_WRITER {
                        let body = format!("writer {w} message {i}");
                        seqs.push(writer.post_message("owner", &gid(1), body.as_bytes()).await);
                    }
                    seqs
                })
            })
            .collect();

        let mut acked = Vec::new();
        for task in writer_tasks {
            let seqs = task.await.unwrap();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one writer's seqs increase");
            acked.extend(seqs);
        }
        acked.sort_unstable();
        assert_eq!(acked, (1..=TOTAL).collect::<Vec<_>>(), "every append got its own seq");

        for task in reader_tasks {
            let seen = tokio::time::timeout(Duration::from_secs(60), task).await.expect("reader finished").unwrap();
            assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
        }
        assert_eq!(owner.group("owner", &gid(1)).await.last_seq, TOTAL);
    }
}
