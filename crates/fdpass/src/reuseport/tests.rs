//! The program loaded into the real kernel (these tests need root or
//! CAP_BPF, as CI has), checked by where real connections land.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::*;

/// `n` SO_REUSEPORT listeners on one ephemeral loopback port, each in
/// slot i of a freshly loaded balancer with `limits[i]`.
fn group(limits: &[i64]) -> (KernelBalancer, Vec<TcpListener>, SocketAddr) {
    let balancer = KernelBalancer::load().expect("load the program (root?)");
    let first =
        crate::bind_tcp("127.0.0.1:0".parse().expect("addr"), Some(128), true).expect("bind");
    let first = TcpListener::from(first);
    let addr = first.local_addr().expect("addr");
    let mut listeners = vec![first];
    for _ in 1..limits.len() {
        listeners.push(TcpListener::from(crate::bind_tcp(addr, Some(128), true).expect("bind")));
    }
    for (slot, (listener, limit)) in listeners.iter().zip(limits).enumerate() {
        balancer.join(slot as u32, listener.as_fd(), *limit).expect("join");
    }
    (balancer, listeners, addr)
}

fn set_load(table: &LoadTable, slot: u32, value: i64) {
    assert!(table.reconcile(slot, table.load(slot), value));
}

/// Connects `n` clients (handshakes complete in the kernel; nobody has
/// accepted them yet).
fn connect(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).expect("connect")).collect()
}

/// How many connections wait on each listener, once `total` arrived.
fn queued(listeners: &[TcpListener], total: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts: Vec<u32> =
            listeners.iter().map(|l| listen_queue_len(l.as_fd()).expect("TCP_INFO")).collect();
        if counts.iter().sum::<u32>() == total || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_verifier_accepts_the_program_and_it_is_small() {
    let table = LoadTable::open(
        sys::map_create(BPF_MAP_TYPE_ARRAY, 4, (TABLE_WORDS * 8) as u32, 1, BPF_F_MMAPABLE, "t")
            .expect("map"),
    )
    .expect("mmap");
    let socks = sys::map_create(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, MAX_SLOTS, 0, "s")
        .expect("sockarray");
    let insns = program(table.fd(), socks.as_fd());
    assert!(insns.len() < 100, "{} instructions", insns.len());
    load_program(&insns).expect("verified");
}

#[test]
fn a_broken_program_is_refused_with_the_verifiers_log() {
    // Reads r2 before anything wrote it.
    let insns = assemble(&[mov(R0, R2), exit()]);
    match load_program(&insns) {
        Err(LoadError::Rejected { log, .. }) => assert!(log.contains("R2 !read_ok"), "{log}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn equal_loads_alternate_because_each_pick_reserves() {
    let (balancer, listeners, addr) = group(&[NO_LIMIT, NO_LIMIT]);
    let _clients = connect(addr, 40);
    let counts = queued(&listeners, 40);
    assert!(counts[0].abs_diff(counts[1]) <= 1, "{counts:?}");
    assert_eq!(
        (balancer.table().load(0), balancer.table().load(1)),
        (i64::from(counts[0]), i64::from(counts[1]))
    );
    let (selected, migrated, fallbacks) = balancer.table().counters();
    assert_eq!((selected, migrated, fallbacks), (40, 0, 0));
}

#[test]
fn a_loaded_listener_gets_nothing_until_the_others_catch_up() {
    let (balancer, listeners, addr) = group(&[NO_LIMIT, NO_LIMIT, NO_LIMIT]);
    set_load(balancer.table(), 0, 25);
    set_load(balancer.table(), 2, 5);
    let _clients = connect(addr, 30);
    // 5 to slot 1 until it reaches slot 2's 5, then slots 1 and 2 share
    // the rest, staying within one of each other, below slot 0's 25.
    let counts = queued(&listeners, 30);
    assert_eq!(counts[0], 0, "{counts:?}");
    assert!(counts[1].abs_diff(counts[2] + 5) <= 1, "{counts:?}");
}

#[test]
fn pull_never_picks_a_full_listener_while_another_has_room() {
    let (balancer, listeners, addr) = group(&[2, NO_LIMIT]);
    set_load(balancer.table(), 1, 10);
    let _clients = connect(addr, 20);
    let counts = queued(&listeners, 20);
    assert_eq!(counts, vec![2, 18], "slot 0 took its 2 although slot 1 was busier");
    // When every slot is full, the least full takes it.
    let (balancer, listeners, addr) = group(&[1, 1]);
    set_load(balancer.table(), 0, 1);
    set_load(balancer.table(), 1, 3);
    let _clients = connect(addr, 2);
    assert_eq!(queued(&listeners, 2), vec![2, 0]);
}

#[test]
fn an_empty_slot_is_never_picked_and_a_closing_listeners_queue_moves() {
    let (balancer, mut listeners, addr) = group(&[NO_LIMIT, NO_LIMIT]);
    // Everything to slot 0 first.
    set_load(balancer.table(), 1, 1000);
    let clients = connect(addr, 30);
    assert_eq!(queued(&listeners, 30), vec![30, 0]);
    // Slot 0's worker dies with 30 queued: the kernel runs the program for
    // each and they move to slot 1, none reset.
    drop(listeners.remove(0));
    let moved = queued(&listeners, 30);
    assert_eq!(moved, vec![30]);
    let (_, migrated, _) = balancer.table().counters();
    assert_eq!(migrated, 30);
    // The one pick of the dead slot gave its reservation back.
    assert_eq!(balancer.table().load(0), 30);
    listeners[0].set_nonblocking(true).expect("nonblocking");
    for mut client in clients {
        let (mut server, _) = listeners[0].accept().expect("accept a moved connection");
        std::io::Write::write_all(&mut client, b"ping").expect("write");
        let mut buf = [0u8; 4];
        server.set_nonblocking(false).expect("blocking");
        std::io::Read::read_exact(&mut server, &mut buf).expect("alive");
        assert_eq!(&buf, b"ping");
    }
    // The empty slot 0 is skipped from now on.
    let _more = connect(addr, 5);
    assert_eq!(queued(&listeners, 5), vec![5]);
    // The program found slot 0 empty at the first migration, marked it
    // and chose again: no connection was left to the kernel's hash.
    let (_, _, fallbacks) = balancer.table().counters();
    assert_eq!(fallbacks, 0);
    assert!(balancer.table().limit(0) < 0, "marked empty by the program");
    assert!(!balancer.slot_taken(0).expect("lookup"));
    assert!(balancer.slot_taken(1).expect("lookup"));
}

#[test]
fn a_worker_that_stopped_beating_gets_nothing_while_another_beats() {
    let (balancer, listeners, addr) = group(&[NO_LIMIT, NO_LIMIT]);
    // Slot 0 last beat a second ago; slot 1 is busier but alive.
    let second_ago = crate::monotonic_ns() as i64 - 1_000_000_000;
    balancer.table().word(HEARTBEATS_AT).store(second_ago, Ordering::Relaxed);
    set_load(balancer.table(), 1, 10);
    let _clients = connect(addr, 20);
    assert_eq!(queued(&listeners, 20), vec![0, 20]);
    assert!(balancer.table().heartbeat_age(0).expect("beat") >= Duration::from_millis(900));
}

#[test]
fn the_table_api_reads_and_writes_the_slots_it_names_and_no_other() {
    let (balancer, _listeners, addr) = group(&[NO_LIMIT, 5]);
    let table = balancer.table();
    // Fresh: every slot without a worker is empty, and never beat.
    assert!((2..MAX_SLOTS).all(|slot| table.limit(slot) == -1), "limits start at -1");
    assert_eq!(table.heartbeat_age(7), None);
    assert!(table.heartbeat_age(0).is_some(), "join beats");
    // Out of range: nothing, and nothing aliased (slot MAX_SLOTS would be
    // limit[0]'s word).
    assert_eq!((table.load(MAX_SLOTS), table.limit(MAX_SLOTS)), (0, -1));
    assert_eq!((table.limit(0), table.limit(1)), (NO_LIMIT, 5));
    assert_eq!(table.n_slots(), 2);
    // Release takes one off, withdraw and leave empty a slot.
    set_load(table, 1, 7);
    table.release(1);
    assert_eq!(table.load(1), 6);
    table.withdraw(1);
    assert_eq!(table.limit(1), -1);
    // A new worker's listener in that slot starts it afresh.
    let next = TcpListener::from(crate::bind_tcp(addr, Some(128), true).expect("bind"));
    balancer.join(1, next.as_fd(), 3).expect("join again");
    assert_eq!((table.load(1), table.limit(1), table.load(0)), (0, 3, 0));
    balancer.leave(0);
    assert_eq!(table.limit(0), -1);
}

#[test]
fn of_equal_loads_an_awake_worker_wins_but_a_lower_load_wins_over_awake() {
    let (balancer, listeners, addr) = group(&[NO_LIMIT, NO_LIMIT]);
    let table = balancer.table();
    let mut clients = Vec::new();
    // Ten ties, each with slot 0 asleep: a random start alone would give
    // slot 0 about half of them.
    for i in 1..=10 {
        table.beat(0);
        table.beat(1);
        table.fall_asleep(0);
        set_load(table, 0, 0);
        set_load(table, 1, 0);
        clients.extend(connect(addr, 1));
        assert_eq!(queued(&listeners, i), vec![0, i], "tie {i}");
    }
    assert!(table.asleep(0) && !table.asleep(1));
    // Asleep with less load still wins: the load decides first.
    table.wake_up(0);
    assert!(!table.asleep(0));
    table.fall_asleep(1);
    set_load(table, 0, 1);
    set_load(table, 1, 0);
    clients.extend(connect(addr, 1));
    assert_eq!(queued(&listeners, 11), vec![0, 11]);
}
