//! The seed floor: a seed-style client — blocking semaphore waits, whole-field copies, as the
//! seed's C# client does — against a minimal worker that follows the seed spec and nothing
//! more (wait, copy, post), and against our standalone worker, in both placements. What a
//! seed-era client pays beyond the protocol itself is the ratio of the two.
//!
//! The minimal worker is this program again (`__bench-seed-worker`), pinned, on a prefix of its
//! own; it answers `response` bytes (the first the system prompt's first byte, as a tag) and
//! exits, removing its names, when the client sets the shutdown byte. Both sides use only the
//! library's thin OS wrappers (`sem_wait`/`sem_clockwait`/`sem_post`, copies in and out of the
//! mapping), so the floor is the semaphores and the copies.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use llama_shm::internals::os::shm::OpenCheck;
use llama_shm::internals::os::{NamedSemaphore, SharedMemory};
use llama_shm::internals::stats::{fmt_duration, summarize};
use llama_shm::Prefix;

use super::table::Table;
use super::transports::{pin_current_thread, pin_for_good, Payload, Placement};
use super::BenchArgs;

/// The seed's offsets and sizes (its C# client's constants).
const SYSTEM: usize = 0;
const USER: usize = 4096;
const RESPONSE: usize = 8192;
const RESPONSE_LEN: usize = 32768;
const SHUTDOWN: usize = 40960;
const SEED_SIZE: usize = 40961;
const FIELD: usize = 4096;

/// Options of the hidden `__bench-seed-worker` sub-command.
#[derive(Debug, clap::Args)]
pub struct SeedWorkerArgs {
    /// The prefix whose seed names the worker creates.
    #[arg(long)]
    prefix: Prefix,
    /// The CPU to pin this process to.
    #[arg(long)]
    cpu: usize,
    /// Bytes of every answer.
    #[arg(long)]
    response: usize,
}

/// The minimal seed worker: creates the four names, then `post ready; wait prompts_written;
/// copy both prompts out; copy the answer in; post response_written` until the shutdown byte
/// is 1 (or 10 s without a request). Exit status 0, or 1 on an OS error.
pub fn serve_seed_worker(args: &SeedWorkerArgs) -> u8 {
    match seed_worker(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("__bench-seed-worker: {e:#}");
            1
        }
    }
}

fn seed_worker(args: &SeedWorkerArgs) -> anyhow::Result<()> {
    pin_for_good(args.cpu).context("pinning")?;
    ensure!(
        (1..RESPONSE_LEN).contains(&args.response),
        "--response must be 1..32767"
    );
    let shm = SharedMemory::create(&args.prefix.shm(), SEED_SIZE, 0o600).context("creating the object")?;
    let [r, p, w] = args.prefix.sems();
    let sems = [&r, &p, &w].map(|n| NamedSemaphore::create(n, 0o600, 0));
    let [ready, prompts, response] = sems;
    let (ready, prompts, response) = (ready?, prompts?, response?);
    let mut system = vec![0u8; FIELD];
    let mut user = vec![0u8; FIELD];
    let mut answer = vec![b'r'; args.response + 1];
    answer[args.response] = 0;
    let result = (|| -> anyhow::Result<()> {
        loop {
            ready.post()?;
            if !prompts.wait_until(Some(Instant::now() + Duration::from_secs(10)))? {
                return Ok(());
            }
            let mut byte = [0u8];
            shm.read(SHUTDOWN, &mut byte);
            if byte[0] == 1 {
                return Ok(());
            }
            shm.read(SYSTEM, &mut system);
            shm.read(USER, &mut user);
            answer[0] = system[0];
            shm.write(RESPONSE, &answer);
            response.post()?;
        }
    })();
    let _ = shm.unlink();
    for s in [&ready, &prompts, &response] {
        let _ = s.unlink();
    }
    result
}

/// Options of the hidden `__bench-seed-client` sub-command: the seed-style client alone
/// against a worker already running on `prefix` (for profiling a worker under callgrind).
#[derive(Debug, clap::Args)]
pub struct SeedClientArgs {
    /// The running worker's prefix.
    #[arg(long)]
    prefix: Prefix,
    /// Round trips to make.
    #[arg(long, default_value_t = 10_000)]
    iters: usize,
    /// Bytes each answer must have.
    #[arg(long, default_value_t = 200)]
    response: usize,
    /// Ask the worker to exit at the end (the shutdown byte).
    #[arg(long)]
    shutdown: bool,
}

/// `__bench-seed-client`: `iters` seed-style round trips, then the p50 on stdout.
pub fn run_seed_client(args: &SeedClientArgs) -> anyhow::Result<()> {
    let payload = Payload {
        response: args.response,
        ..Payload::SMALL
    };
    let mut client = SeedClient::open(&args.prefix, payload, true)?;
    let mut samples = Vec::with_capacity(args.iters);
    for i in 0..args.iters {
        let t = Instant::now();
        let len = client.round_trip(b'a' + (i % 26) as u8)?;
        samples.push(t.elapsed());
        ensure!(
            len == payload.response,
            "an answer of {len} bytes, expected {}",
            payload.response
        );
    }
    if args.shutdown {
        client.shutdown()?;
    }
    println!("p50 {}", fmt_duration(summarize(&mut samples).p50));
    Ok(())
}

/// The seed-style client: the four names opened, then per round trip `wait ready; write both
/// whole fields (text, NUL, zeros) and the shutdown byte; post prompts_written; wait
/// response_written; read the whole response field` — with untimed or timed waits.
struct SeedClient {
    shm: SharedMemory,
    ready: NamedSemaphore,
    prompts: NamedSemaphore,
    response: NamedSemaphore,
    system: Vec<u8>,
    user: Vec<u8>,
    answer: Vec<u8>,
    timed: bool,
}

impl SeedClient {
    fn open(prefix: &Prefix, payload: Payload, timed: bool) -> anyhow::Result<Self> {
        let check = OpenCheck {
            same_owner: true,
            max_mode: 0o600,
            min_size: SEED_SIZE,
            map_at_most: SEED_SIZE,
        };
        let shm = SharedMemory::open(&prefix.shm(), check).context("opening the object")?;
        let [r, p, w] = prefix.sems();
        let open = |n| NamedSemaphore::open(n, 0o600).context("opening a semaphore");
        let field = |len: usize, c: u8| {
            let mut f = vec![0u8; FIELD];
            f[..len].fill(c);
            f
        };
        Ok(Self {
            ready: open(&r)?,
            prompts: open(&p)?,
            response: open(&w)?,
            shm,
            system: field(payload.system, b's'),
            user: field(payload.user, b'u'),
            answer: vec![0u8; RESPONSE_LEN],
            timed,
        })
    }

    fn wait(&self, sem: &NamedSemaphore) -> anyhow::Result<()> {
        let deadline = self.timed.then(|| Instant::now() + Duration::from_secs(10));
        if !sem.wait_until(deadline)? {
            bail!("the worker did not answer within 10 s");
        }
        Ok(())
    }

    /// One round trip with tag `c`; returns the answer's length.
    fn round_trip(&mut self, c: u8) -> anyhow::Result<usize> {
        self.wait(&self.ready)?;
        self.system[0] = c;
        self.shm.write(SYSTEM, &self.system);
        self.shm.write(USER, &self.user);
        self.shm.write(SHUTDOWN, &[0]);
        self.prompts.post()?;
        self.wait(&self.response)?;
        self.shm.read(RESPONSE, &mut self.answer);
        let len = self.answer.iter().position(|&b| b == 0).unwrap_or(RESPONSE_LEN);
        ensure!(
            self.answer[0] == c,
            "a stale answer (tag {:?}, expected {:?})",
            self.answer[0],
            c
        );
        Ok(len)
    }

    /// Asks the worker to exit the seed's way (our worker takes the same byte).
    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.wait(&self.ready)?;
        self.shm.write(SHUTDOWN, &[1]);
        self.prompts.post()?;
        Ok(())
    }
}

/// Which worker a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    Minimal,
    Ours,
}

/// Starts `which` on `prefix`, pinned to `cpu`, answering `bytes`, and waits for its names.
fn start(which: Worker, worker: &Path, prefix: &Prefix, cpu: usize, bytes: usize) -> anyhow::Result<Child> {
    let mut cmd = match which {
        Worker::Minimal => {
            let mut c = Command::new(std::env::current_exe().context("this program")?);
            c.args(["__bench-seed-worker", "--prefix", prefix.as_str()])
                .arg(format!("--cpu={cpu}"))
                .arg(format!("--response={bytes}"));
            c
        }
        Worker::Ours => {
            let mut c = Command::new(worker);
            c.args([
                "--prefix",
                prefix.as_str(),
                "--engine",
                "echo",
                "--echo-bytes",
                &bytes.to_string(),
            ]);
            c
        }
    };
    // Our worker inherits the spawning thread's CPU mask; the minimal one pins itself.
    let child = {
        let _pin = pin_current_thread(cpu).context("pinning")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the worker")?
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let [_, _, w] = prefix.sems();
    let last = std::path::PathBuf::from(format!("/dev/shm/sem.{}", &w.to_string_lossy()[1..]));
    while !last.exists() {
        ensure!(
            Instant::now() < deadline,
            "the worker did not create its names within 10 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(child)
}

/// p50 of `iters` seed-style round trips (after `warmup`) against `which`.
fn measure(
    which: Worker,
    worker: &Path,
    payload: Payload,
    placement: Placement,
    timed: bool,
    (warmup, iters): (usize, usize),
    n: usize,
) -> anyhow::Result<Duration> {
    let prefix: Prefix = format!("lshm_bench_seed{}_{n}", std::process::id())
        .parse()
        .context("prefix")?;
    let (client_cpu, worker_cpu) = placement.cpus();
    let mut child = start(which, worker, &prefix, worker_cpu, payload.response)?;
    let result = (|| -> anyhow::Result<Duration> {
        let mut client = SeedClient::open(&prefix, payload, timed)?;
        let _pin = pin_current_thread(client_cpu).context("pinning")?;
        let mut samples = Vec::with_capacity(iters);
        for i in 0..warmup + iters {
            let t = Instant::now();
            let len = client.round_trip(b'a' + (i % 26) as u8)?;
            let dt = t.elapsed();
            ensure!(
                len == payload.response,
                "an answer of {len} bytes, expected {}",
                payload.response
            );
            if i >= warmup {
                samples.push(dt);
            }
        }
        client.shutdown()?;
        Ok(summarize(&mut samples).p50)
    })();
    // Exit, removing its names (our worker: on the shutdown byte; a failed run: killed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline || result.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = llama_shm::internals::objects::unlink_prefix(&prefix);
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    result
}

/// Prints the seed-floor table: for each placement and wait kind, the seed-style client's p50
/// against the minimal worker and against ours, three alternating runs each (medians).
pub fn run(args: &BenchArgs, worker: &Path) -> anyhow::Result<()> {
    println!("## The seed floor: a seed-style client against a minimal spec worker and ours\n");
    let payload = Payload::SMALL;
    let counts = ((args.iters / 10).clamp(1, 2000), args.iters);
    println!(
        "Seed-style client (blocking waits, whole-field copies), {}/{}/{} bytes, {} round trips after {} \
         warm-up, p50, median of 3 alternating runs.\n",
        payload.system, payload.user, payload.response, counts.1, counts.0
    );
    let mut table = Table::new([
        "placement",
        "waits",
        "minimal worker",
        "our worker",
        "ours / minimal",
        "met",
    ]);
    let mut n = 0;
    for placement in Placement::ALL {
        for timed in [false, true] {
            let (mut minimal, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..3 {
                for (which, out) in [(Worker::Minimal, &mut minimal), (Worker::Ours, &mut ours)] {
                    n += 1;
                    out.push(measure(which, worker, payload, placement, timed, counts, n)?);
                }
            }
            // The median of the three runs' p50s (nearest rank: the middle one).
            let (m, o) = (summarize(&mut minimal).p50, summarize(&mut ours).p50);
            // Judged unrounded: 1.153 is over the goal, though it prints as 1.15 at two places.
            let ratio = o.as_secs_f64() / m.as_secs_f64();
            table.row([
                placement.name().into(),
                if timed { "timed" } else { "untimed" }.into(),
                fmt_duration(m),
                fmt_duration(o),
                format!("{ratio:.3}× (goal ≤ 1.15×)"),
                (if ratio <= 1.15 { "yes" } else { "no" }).into(),
            ]);
        }
    }
    table.print();
    Ok(())
}
