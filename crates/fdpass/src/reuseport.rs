//! The kernel balancer of `--mode reuseport --policy least|pull`: an eBPF
//! `SK_REUSEPORT` program that picks, for every SYN, the least-loaded
//! worker's listener, and — because it is attached as
//! `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE` — is run again for every queued and
//! half-open connection of a listener that closes, moving it to another
//! listener instead of resetting it.
//!
//! Three kernel objects, all owned by the master ([`KernelBalancer`]) and
//! handed to a new master at an upgrade:
//! - the **sockarray** (`REUSEPORT_SOCKARRAY`, [`MAX_SLOTS`] slots): slot
//!   *i* is one worker's listener; a slot empties itself when its listener
//!   closes;
//! - the **table** (an mmapable array of one 4 KiB element, [`LoadTable`]):
//!   the number of slots in use, three counters, and per slot a *load* and
//!   a *limit*. The program adds 1 to the load of the slot it picks (a
//!   reservation, so a worker that accepts nothing — stopped, hung — looks
//!   busier with every SYN it is given); the worker subtracts 1 when it
//!   finishes a connection, and now and then resets its load to what it
//!   really has (held + accept queue) to undo drift. A limit below 0 marks
//!   an empty slot; `pull` sets it to the worker's `--max-conns`, and a
//!   slot at its limit is picked only when every slot is;
//! - the **program**, written below as raw instructions (no compiler
//!   needed), loaded with `bpf(BPF_PROG_LOAD)` and attached to the reuseport
//!   group with `SO_ATTACH_REUSEPORT_EBPF`.
//!
//! Each worker also beats: it writes the time into its slot every
//! [`HEARTBEAT_EVERY_MS`]. A slot that has not beaten for 250 ms is taken
//! for a stopped or hung worker.
//!
//! The program scans every slot in use from a random start and takes the
//! lowest score (the load, plus 2^40 for a slot at its limit or stale);
//! of equal loads it prefers a worker that is awake (it clears a bit of
//! its heartbeat when `epoll_wait` returns and sets it before the next
//! one), and otherwise the first seen, so equal loads spread at random. If no slot qualifies, or
//! the chosen slot's listener is gone, it returns `SK_PASS` without a
//! choice and the kernel falls back to its hash — never worse than plain
//! reuseport.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use crate::sys::bpf::{self as sys, WordsMapping};

/// Listener slots: the most workers the program chooses between.
pub const MAX_SLOTS: u32 = 128;

/// Words (i64) in the table; 4 KiB, one page.
const TABLE_WORDS: usize = 512;
/// Word: the number of slots the program scans (a high-water mark).
const N_SLOTS: usize = 0;
/// Word: connections the program placed (new ones and migrated ones).
const SELECTED: usize = 1;
/// Word: connections it placed while their listener was closing.
const MIGRATED: usize = 2;
/// Word: connections it left to the kernel's hash.
const FALLBACKS: usize = 3;
/// First word of the loads, one per slot.
const LOADS_AT: usize = 8;
/// First word of the limits, one per slot.
const LIMITS_AT: usize = LOADS_AT + MAX_SLOTS as usize;
/// First word of the heartbeats, one per slot: when its worker last
/// went round its loop (`CLOCK_MONOTONIC` ns, the program's clock), with
/// the lowest bit set while it waits in `epoll_wait` ([`ASLEEP`]).
const HEARTBEATS_AT: usize = LIMITS_AT + MAX_SLOTS as usize;
const _: () = assert!(HEARTBEATS_AT + MAX_SLOTS as usize <= TABLE_WORDS);
const _: () = assert!(MAX_SLOTS.is_power_of_two());

/// The heartbeat's bit that says its worker sleeps (1 ns of the time,
/// which no staleness check can notice): of two slots with the same load
/// the program picks an awake one, whose loop takes the connection on its
/// way round, instead of waking a sleeper (a context switch, measured at
/// about 0.1–0.2 more per connection with ties going at random).
const ASLEEP: i64 = 1;
/// A limit that never binds (`least`).
pub const NO_LIMIT: i64 = i64::MAX;
/// The score added to a slot at its limit, or stale: 2^40.
const PENALTY_SHIFT: i32 = 40;
/// A worker whose heartbeat is older than this (250 ms; it beats every
/// [`HEARTBEAT_EVERY_MS`]) is taken for stopped or hung.
const STALE_AFTER_NS: i32 = 250_000_000;
/// How often a worker beats (and reconciles its load), milliseconds.
pub const HEARTBEAT_EVERY_MS: u64 = 50;

// linux/bpf.h
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SK_REUSEPORT: u32 = 21;
const BPF_SK_REUSEPORT_SELECT_OR_MIGRATE: u32 = 40;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_KTIME_GET_NS: i32 = 5;
const BPF_FUNC_GET_PRANDOM_U32: i32 = 7;
const BPF_FUNC_SK_SELECT_REUSEPORT: i32 = 82;
const SK_PASS: i32 = 1;
/// `offsetof(struct sk_reuseport_md, migrating_sk)`.
const MD_MIGRATING_SK: i16 = 48;

/// The shared table: counters, loads and limits (see the module docs).
#[derive(Debug)]
pub struct LoadTable {
    mapping: WordsMapping<TABLE_WORDS>,
    fd: OwnedFd,
}

impl LoadTable {
    /// Maps the table map `fd` (a worker gets it with its `Listen`).
    pub fn open(fd: OwnedFd) -> io::Result<LoadTable> {
        let mapping = WordsMapping::map(fd.as_fd())?;
        Ok(LoadTable { mapping, fd })
    }

    /// The map's fd, to send to a worker or a new master.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn word(&self, index: usize) -> &std::sync::atomic::AtomicI64 {
        &self.mapping.words()[index]
    }

    fn slot_word(&self, first: usize, slot: u32) -> Option<&std::sync::atomic::AtomicI64> {
        (slot < MAX_SLOTS).then(|| self.word(first + slot as usize))
    }

    /// The load of `slot` as the program sees it: reservations of the
    /// connections it was given, less those its worker finished.
    pub fn load(&self, slot: u32) -> i64 {
        self.slot_word(LOADS_AT, slot).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// The limit of `slot`; below 0 when it holds no worker.
    pub fn limit(&self, slot: u32) -> i64 {
        self.slot_word(LIMITS_AT, slot).map_or(-1, |w| w.load(Ordering::Relaxed))
    }

    /// A worker finished a connection it accepted.
    pub fn release(&self, slot: u32) {
        if let Some(word) = self.slot_word(LOADS_AT, slot) {
            word.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Sets `slot`'s load to what its worker observed (held + queued),
    /// unless the program changed it meanwhile (then the next try will).
    pub fn reconcile(&self, slot: u32, seen_before: i64, observed: i64) -> bool {
        self.slot_word(LOADS_AT, slot).is_some_and(|word| {
            word.compare_exchange(seen_before, observed, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Never pick `slot` again (its worker stops accepting, or is gone).
    pub fn withdraw(&self, slot: u32) {
        if let Some(word) = self.slot_word(LIMITS_AT, slot) {
            word.store(-1, Ordering::Release);
        }
    }

    /// `slot`'s worker is alive and going round its loop (and so awake).
    pub fn beat(&self, slot: u32) {
        if let Some(word) = self.slot_word(HEARTBEATS_AT, slot) {
            word.store(crate::monotonic_ns() as i64 & !ASLEEP, Ordering::Relaxed);
        }
    }

    /// `slot`'s worker is about to wait for events: on a tie, prefer others.
    pub fn fall_asleep(&self, slot: u32) {
        if let Some(word) = self.slot_word(HEARTBEATS_AT, slot) {
            word.fetch_or(ASLEEP, Ordering::Relaxed);
        }
    }

    /// `slot`'s worker woke up.
    pub fn wake_up(&self, slot: u32) {
        if let Some(word) = self.slot_word(HEARTBEATS_AT, slot) {
            word.fetch_and(!ASLEEP, Ordering::Relaxed);
        }
    }

    /// Whether `slot`'s worker said it waits for events.
    pub fn asleep(&self, slot: u32) -> bool {
        self.slot_word(HEARTBEATS_AT, slot).is_some_and(|w| w.load(Ordering::Relaxed) & ASLEEP != 0)
    }

    /// How long ago `slot`'s worker last beat.
    pub fn heartbeat_age(&self, slot: u32) -> Option<std::time::Duration> {
        let beat = self.slot_word(HEARTBEATS_AT, slot)?.load(Ordering::Relaxed);
        let now = crate::monotonic_ns() as i64;
        (beat > 0).then(|| std::time::Duration::from_nanos(now.saturating_sub(beat).max(0) as u64))
    }

    /// Connections the program placed, migrated, and left to the hash.
    pub fn counters(&self) -> (u64, u64, u64) {
        let get = |i| self.word(i).load(Ordering::Relaxed).max(0) as u64;
        (get(SELECTED), get(MIGRATED), get(FALLBACKS))
    }

    /// Slots the program scans.
    pub fn n_slots(&self) -> u32 {
        self.word(N_SLOTS).load(Ordering::Relaxed).clamp(0, i64::from(MAX_SLOTS)) as u32
    }
}

/// Why the program could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No privilege to load BPF (not root, no CAP_BPF, or unprivileged BPF
    /// disabled).
    #[error(
        "loading the reuseport eBPF program needs root or CAP_BPF (and \
         kernel.unprivileged_bpf_disabled does not allow it otherwise): {0}"
    )]
    NotPermitted(io::Error),
    /// The verifier refused the program.
    #[error("the kernel's verifier rejected the reuseport program: {err}\n{log}")]
    Rejected {
        /// The error `bpf(BPF_PROG_LOAD)` returned.
        err: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Creating a map failed for another reason (an old kernel, memory).
    #[error("creating the reuseport eBPF maps: {0}")]
    Maps(io::Error),
}

/// The program, its sockarray and its table: the master's.
#[derive(Debug)]
pub struct KernelBalancer {
    prog: OwnedFd,
    sockarray: OwnedFd,
    table: LoadTable,
}

fn permission(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

impl KernelBalancer {
    /// Creates the maps and loads the program (Linux 5.14+, privileged).
    pub fn load() -> Result<KernelBalancer, LoadError> {
        let maps_err = |err: io::Error| {
            if permission(&err) {
                LoadError::NotPermitted(err)
            } else {
                LoadError::Maps(err)
            }
        };
        let sockarray =
            sys::map_create(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 8, MAX_SLOTS, 0, "handoff_socks")
                .map_err(maps_err)?;
        let table = sys::map_create(
            BPF_MAP_TYPE_ARRAY,
            4,
            (TABLE_WORDS * 8) as u32,
            1,
            BPF_F_MMAPABLE,
            "handoff_loads",
        )
        .map_err(maps_err)?;
        let table = LoadTable::open(table).map_err(LoadError::Maps)?;
        for slot in 0..MAX_SLOTS {
            table.word(LIMITS_AT + slot as usize).store(-1, Ordering::Relaxed);
        }
        let insns = program(table.fd(), sockarray.as_fd());
        let prog = load_program(&insns)?;
        Ok(KernelBalancer { prog, sockarray, table })
    }

    /// The balancer an old master handed over at an upgrade (the fds of
    /// [`KernelBalancer::fds`], in that order).
    pub fn inherit(prog: OwnedFd, sockarray: OwnedFd, table: OwnedFd) -> io::Result<Self> {
        Ok(KernelBalancer { prog, sockarray, table: LoadTable::open(table)? })
    }

    /// Program, sockarray and table, to hand to a new master.
    pub fn fds(&self) -> [BorrowedFd<'_>; 3] {
        [self.prog.as_fd(), self.sockarray.as_fd(), self.table.fd()]
    }

    /// The shared table.
    pub fn table(&self) -> &LoadTable {
        &self.table
    }

    /// Whether `slot` holds a listener (of this master's workers or of an
    /// old master's, still draining).
    pub fn slot_taken(&self, slot: u32) -> io::Result<bool> {
        Ok(sys::map_lookup_u64(self.sockarray.as_fd(), slot)?.is_some())
    }

    /// Puts a worker's `listener` (listening, in the group) into `slot`
    /// with `limit`, and (re)attaches the program to the group, which a
    /// group that lost all its listeners has forgotten.
    pub fn join(&self, slot: u32, listener: BorrowedFd<'_>, limit: i64) -> io::Result<()> {
        if slot >= MAX_SLOTS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such slot"));
        }
        let (load, lim) = (LOADS_AT + slot as usize, LIMITS_AT + slot as usize);
        self.table.word(lim).store(-1, Ordering::Relaxed);
        self.table.word(load).store(0, Ordering::Relaxed);
        self.table.beat(slot);
        sys::map_update_u64(self.sockarray.as_fd(), slot, listener_fd(listener))?;
        sys::attach_reuseport_prog(listener, self.prog.as_fd())?;
        self.table.word(N_SLOTS).fetch_max(i64::from(slot) + 1, Ordering::Relaxed);
        self.table.word(lim).store(limit.max(0), Ordering::Release);
        Ok(())
    }

    /// `slot`'s worker stopped accepting or is gone: never pick it again.
    pub fn leave(&self, slot: u32) {
        self.table.withdraw(slot);
    }
}

fn listener_fd(listener: BorrowedFd<'_>) -> u64 {
    use std::os::fd::AsRawFd;
    listener.as_raw_fd() as u64
}

fn load_program(insns: &[u64]) -> Result<OwnedFd, LoadError> {
    const LICENSE: &CStr = c"GPL";
    let load = |log: &mut [u8]| {
        sys::prog_load(
            BPF_PROG_TYPE_SK_REUSEPORT,
            BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
            insns,
            LICENSE,
            "handoff_pick",
            log,
        )
    };
    match load(&mut []) {
        Ok(fd) => Ok(fd),
        Err(err) if permission(&err) => Err(LoadError::NotPermitted(err)),
        Err(_) => {
            // Again, with the verifier's log this time.
            let mut log = vec![0u8; 1 << 20];
            match load(&mut log) {
                Ok(fd) => Ok(fd),
                Err(err) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]);
                    // The end of the log says why.
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                    Err(LoadError::Rejected { err, log: tail })
                }
            }
        }
    }
}

/// A listener's accept queue (connections that completed the handshake and
/// wait for `accept`).
pub fn listen_queue_len(listener: BorrowedFd<'_>) -> io::Result<u32> {
    sys::listen_queue_len(listener)
}

// ---------------------------------------------------------------------
// The program: a tiny assembler (instruction constructors and labels, as
// the kernel's own samples write programs) and the program itself.

/// eBPF registers.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Reg {
    R0 = 0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
}
use Reg::*;

// Instruction classes, sizes, modes, sources and operations (linux/bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const ST: u8 = 0x02;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const W: u8 = 0x00;
const DW: u8 = 0x18;
const IMM: u8 = 0x00;
const MEM: u8 = 0x60;
const ATOMIC: u8 = 0xc0;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const SUB: u8 = 0x10;
const AND: u8 = 0x50;
const LSH: u8 = 0x60;
const MOD: u8 = 0x90;
const MOV: u8 = 0xb0;
const JA: u8 = 0x00;
const JEQ: u8 = 0x10;
const JGT: u8 = 0x20;
const JGE: u8 = 0x30;
const JNE: u8 = 0x50;
const JLT: u8 = 0xa0;
const JSGE: u8 = 0x70;
const JSLT: u8 = 0xc0;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by fd.
const PSEUDO_MAP_FD: u8 = 1;

/// One instruction, or a label, or a jump to one.
#[derive(Debug, Clone, Copy)]
enum Item {
    Insn { code: u8, dst: u8, src: u8, off: i16, imm: i32 },
    Jump { code: u8, dst: u8, src: u8, imm: i32, to: &'static str },
    Label(&'static str),
}

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Item {
    Item::Insn { code, dst: dst as u8, src: src as u8, off, imm }
}
/// dst = imm
fn mov_k(dst: Reg, imm: i32) -> Item {
    insn(ALU64 | MOV | K, dst, R0, 0, imm)
}
/// dst = src
fn mov(dst: Reg, src: Reg) -> Item {
    insn(ALU64 | MOV | X, dst, src, 0, 0)
}
/// dst op= imm
fn alu_k(op: u8, dst: Reg, imm: i32) -> Item {
    insn(ALU64 | op | K, dst, R0, 0, imm)
}
/// dst op= src
fn alu(op: u8, dst: Reg, src: Reg) -> Item {
    insn(ALU64 | op | X, dst, src, 0, 0)
}
/// dst = *(u64 *)(src + off)
fn load64(dst: Reg, src: Reg, off: i16) -> Item {
    insn(LDX | MEM | DW, dst, src, off, 0)
}
/// *(u32 *)(dst + off) = imm
fn store32_k(dst: Reg, off: i16, imm: i32) -> Item {
    insn(ST | MEM | W, dst, R0, off, imm)
}
/// *(u32 *)(dst + off) = src
fn store32(dst: Reg, off: i16, src: Reg) -> Item {
    insn(STX | MEM | W, dst, src, off, 0)
}
/// *(u64 *)(dst + off) = src
fn store64(dst: Reg, off: i16, src: Reg) -> Item {
    insn(STX | MEM | DW, dst, src, off, 0)
}
/// *(u64 *)(dst + off) = imm (sign-extended)
fn store64_k(dst: Reg, off: i16, imm: i32) -> Item {
    insn(ST | MEM | DW, dst, R0, off, imm)
}
/// lock *(u64 *)(dst + off) += src
fn atomic_add64(dst: Reg, off: i16, src: Reg) -> Item {
    insn(STX | ATOMIC | DW, dst, src, off, ADD as i32)
}
/// if dst op imm goto to
fn jump_k(op: u8, dst: Reg, imm: i32, to: &'static str) -> Item {
    Item::Jump { code: JMP | op | K, dst: dst as u8, src: 0, imm, to }
}
/// if dst op src goto to
fn jump(op: u8, dst: Reg, src: Reg, to: &'static str) -> Item {
    Item::Jump { code: JMP | op | X, dst: dst as u8, src: src as u8, imm: 0, to }
}
/// goto to
fn goto(to: &'static str) -> Item {
    Item::Jump { code: JMP | JA, dst: 0, src: 0, imm: 0, to }
}
fn call(helper: i32) -> Item {
    insn(JMP | CALL, R0, R0, 0, helper)
}
fn exit() -> Item {
    insn(JMP | EXIT, R0, R0, 0, 0)
}
/// dst = the map whose fd is `fd` (two instruction slots).
fn load_map(dst: Reg, fd: BorrowedFd<'_>) -> [Item; 2] {
    use std::os::fd::AsRawFd;
    [
        Item::Insn {
            code: LD | IMM | DW,
            dst: dst as u8,
            src: PSEUDO_MAP_FD,
            off: 0,
            imm: fd.as_raw_fd(),
        },
        Item::Insn { code: 0, dst: 0, src: 0, off: 0, imm: 0 },
    ]
}

/// Byte offset of table word `index`.
const fn at(index: usize) -> i16 {
    (index * 8) as i16
}

/// The selector (see the module docs). Registers: r6 the context, r7 the
/// table, r8 the number of slots, r9 the oldest live heartbeat (then the
/// chosen slot); in the loop r4 counts, r5 is the slot looked at, r3 the
/// best score so far. On the stack: the slot to start at, the best slot
/// ([`MAX_SLOTS`]: none yet), the key for the sockarray, a retry flag.
fn program(table: BorrowedFd<'_>, sockarray: BorrowedFd<'_>) -> Vec<u64> {
    let mut items = vec![
        mov(R6, R1),
        // r7 = the table (element 0 of the table map), or pass.
        store32_k(R10, -4, 0),
        mov(R2, R10),
        alu_k(ADD, R2, -4),
    ];
    items.extend(load_map(R1, table));
    items.extend([
        call(BPF_FUNC_MAP_LOOKUP_ELEM),
        jump_k(JEQ, R0, 0, "pass"),
        mov(R7, R0),
        // A closing listener's connection: count it.
        load64(R1, R6, MD_MIGRATING_SK),
        jump_k(JEQ, R1, 0, "counted"),
        mov_k(R1, 1),
        atomic_add64(R7, at(MIGRATED), R1),
        Item::Label("counted"),
        // One more try if the chosen slot turns out empty ([r10 - 16]).
        mov_k(R1, 0),
        store64(R10, -16, R1),
        // r8 = slots in use, 1..=MAX_SLOTS, or pass. (Read again for the
        // second try, so that nothing the verifier learnt about r8 in the
        // loop survives it: the loop's exits then look alike and the
        // verifier checks what follows once, not once per exit.)
        Item::Label("scan"),
        load64(R8, R7, at(N_SLOTS)),
        jump_k(JEQ, R8, 0, "pass"),
        jump_k(JGT, R8, MAX_SLOTS as i32, "pass"),
        // r9 = the oldest heartbeat that still counts as alive.
        call(BPF_FUNC_KTIME_GET_NS),
        alu_k(SUB, R0, STALE_AFTER_NS),
        mov(R9, R0),
        // [r10 - 24] = a random first slot; no best yet ([r10 - 32]).
        call(BPF_FUNC_GET_PRANDOM_U32),
        alu(MOD, R0, R8),
        store64(R10, -24, R0),
        mov_k(R1, MAX_SLOTS as i32),
        store64(R10, -32, R1),
        mov_k(R3, i32::MAX),
        alu_k(LSH, R3, 31), // 2^62 - 2^31: above any real score
        mov_k(R4, 0),
        // for r4 in 0..r8: r5 = (first + r4) mod r8
        Item::Label("loop"),
        jump(JGE, R4, R8, "done"),
        // (r4 + first, not first + r4: a copy of a register plus a
        // constant ties its range to every branch below, and the verifier
        // would see a different value in each iteration and never finish.)
        load64(R0, R10, -24),
        mov(R5, R4),
        alu(ADD, R5, R0),
        jump(JLT, R5, R8, "in_range"),
        alu(SUB, R5, R8),
        Item::Label("in_range"),
        alu_k(AND, R5, MAX_SLOTS as i32 - 1),
        // r0 = limit[r5]; an empty slot (limit < 0) is skipped.
        mov(R1, R5),
        alu_k(LSH, R1, 3),
        alu(ADD, R1, R7),
        load64(R0, R1, at(LIMITS_AT)),
        jump_k(JSLT, R0, 0, "next"),
        // r1 = load[r5], plus 2^40 if it is at its limit or its worker
        // has not beaten for STALE_AFTER_NS (stopped, hung): such a slot
        // is chosen only when every slot is.
        load64(R2, R1, at(HEARTBEATS_AT)),
        load64(R1, R1, at(LOADS_AT)),
        jump(JSGE, R1, R0, "penalised"),
        jump(JSGE, R2, R9, "fresh"),
        Item::Label("penalised"),
        mov_k(R0, 1),
        alu_k(LSH, R0, PENALTY_SHIFT),
        alu(ADD, R1, R0),
        Item::Label("fresh"),
        // score = 2 × r1 + the asleep bit: the load decides, and of equal
        // loads an awake worker wins.
        alu_k(LSH, R1, 1),
        alu_k(AND, R2, ASLEEP as i32),
        alu(ADD, R1, R2),
        // The lowest score wins; the first seen wins a tie.
        jump(JSGE, R1, R3, "next"),
        mov(R3, R1),
        store64(R10, -32, R5),
        Item::Label("next"),
        alu_k(ADD, R4, 1),
        goto("loop"),
        Item::Label("done"),
        load64(R2, R10, -32),
        jump_k(JGE, R2, MAX_SLOTS as i32, "fallback"),
        // Reserve: load[r2] += 1, before the connection reaches the worker.
        mov(R9, R2),
        mov(R1, R2),
        alu_k(LSH, R1, 3),
        alu(ADD, R1, R7),
        mov_k(R0, 1),
        atomic_add64(R1, at(LOADS_AT), R0),
        // bpf_sk_select_reuseport(ctx, sockarray, &slot, 0)
        store32(R10, -8, R2),
        mov(R1, R6),
    ]);
    items.extend(load_map(R2, sockarray));
    items.extend([
        mov(R3, R10),
        alu_k(ADD, R3, -8),
        mov_k(R4, 0),
        call(BPF_FUNC_SK_SELECT_REUSEPORT),
        jump_k(JEQ, R0, 0, "selected"),
        // The slot's listener is gone (its worker just died, and this may
        // be one of its connections moving): take the reservation back,
        // mark the slot empty, and choose again, once.
        mov(R1, R9),
        alu_k(LSH, R1, 3),
        alu(ADD, R1, R7),
        mov_k(R0, -1),
        atomic_add64(R1, at(LOADS_AT), R0),
        store64_k(R1, at(LIMITS_AT), -1),
        load64(R1, R10, -16),
        jump_k(JNE, R1, 0, "fallback"),
        mov_k(R1, 1),
        store64(R10, -16, R1),
        goto("scan"),
        Item::Label("fallback"),
        // Let the kernel's hash choose.
        mov_k(R1, 1),
        atomic_add64(R7, at(FALLBACKS), R1),
        goto("pass"),
        Item::Label("selected"),
        mov_k(R1, 1),
        atomic_add64(R7, at(SELECTED), R1),
        Item::Label("pass"),
        mov_k(R0, SK_PASS),
        exit(),
    ]);
    assemble(&items)
}

/// Resolves labels into jump offsets and encodes each instruction as the
/// kernel's `struct bpf_insn` (little-endian: code, dst | src << 4, off,
/// imm).
fn assemble(items: &[Item]) -> Vec<u64> {
    let mut labels = std::collections::HashMap::new();
    let mut index = 0i32;
    for item in items {
        match item {
            Item::Label(name) => {
                let fresh = labels.insert(*name, index).is_none();
                assert!(fresh, "label {name} defined twice");
            }
            _ => index += 1,
        }
    }
    let encode = |code: u8, dst: u8, src: u8, off: i16, imm: i32| {
        u64::from(code)
            | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
            | u64::from(off as u16) << 16
            | u64::from(imm as u32) << 32
    };
    let mut out = Vec::with_capacity(index as usize);
    for item in items {
        match *item {
            Item::Label(_) => {}
            Item::Insn { code, dst, src, off, imm } => out.push(encode(code, dst, src, off, imm)),
            Item::Jump { code, dst, src, imm, to } => {
                let target = *labels.get(to).unwrap_or_else(|| panic!("no label {to}"));
                let off = target - (out.len() as i32 + 1);
                out.push(encode(code, dst, src, off as i16, imm));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
