/**
 * The command line as people run it: sipcheck.ts spawned under the runtime that runs these tests
 * (`deno test` covers Deno, `node --test` covers Node), with output, JSON and exit codes. None of
 * these touch the firewall: they use --dry-run, or fail before it.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { spawn } from "node:child_process";
import {
  chmodSync,
  closeSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { dirname, join } from "node:path";
import process from "node:process";
import { after, describe, test } from "node:test";
import { gzipSync } from "node:zlib";
import {
  cliCommand,
  fixture,
  run,
  RUNTIME,
  shebangFlags,
  SIPCHECK,
  sipcheck,
  tempDir,
} from "./helpers.ts";
import { PARALLEL_MIN } from "../sipcheck.ts";

const dir = tempDir();
after(dir.remove);

/** A file in the temp dir. */
function file(name: string, content: string | Uint8Array): string {
  const path = join(dir.path, name);
  writeFileSync(path, content);
  return path;
}

const REGISTER = (address: string) =>
  `[2026-11-25 08:00:00.001] NOTICE[2210] chan_sip.c: Registration from '<sip:1@192.0.2.10>' ` +
  `failed for '${address}:5060' - Wrong password\n`;
/** A line sipcheck reads past. */
const BENIGN =
  "[2026-11-25 08:00:00.002] VERBOSE[2210][C-00000001] pbx.c: Executing [100@default:1] NoOp()\n";

/** Runs sipcheck with --json and returns the parsed report. */
function report(args: string[], input?: string | Uint8Array) {
  const ran = sipcheck(["--json", ...args], input);
  assert.equal(ran.code, 0, ran.stderr);
  return JSON.parse(ran.stdout);
}

/**
 * Runs argv to its end with stdout and stderr to pipes; `gone` closes our end of one of them at
 * once, so that every write of the child to it fails (EPIPE).
 */
async function runClosing(
  argv: string[],
  gone: "stdout" | "stderr" | null,
): Promise<{ code: unknown; stdout: string; stderr: string }> {
  const child = spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
  if (gone) child[gone].destroy();
  let stdout = "";
  let stderr = "";
  if (gone !== "stdout") child.stdout.on("data", (data) => stdout += data);
  if (gone !== "stderr") child.stderr.on("data", (data) => stderr += data);
  const code = await new Promise((resolve) => child.on("close", resolve));
  return { code, stdout, stderr };
}

/** No stack trace, ever: every error is one line starting with "sipcheck: ". */
function assertCleanErrors(stderr: string): void {
  for (const line of stderr.split("\n").filter(Boolean)) {
    assert.match(line, /^sipcheck: /);
  }
  assert.doesNotMatch(stderr, /^\s+at /m);
}

describe(`sipcheck.ts under ${RUNTIME}`, () => {
  test("a reader that stops reading (| head) ends the output quietly, with the run's code", async () => {
    const many = Array.from({ length: 3000 }, (_, i) => REGISTER(`10.1.${i >> 8}.${i & 255}`));
    const log = file("many-addresses.log", many.join(""));
    for (const args of [["--json"], ["--threshold", "1"]]) {
      const { code, stderr } = await runClosing(cliCommand(["--dry-run", ...args, log]), "stdout");
      assert.equal(code, 0, `${args}: ${stderr}`);
      assert.equal(stderr, "", `${args}`);
    }
  });
  test("a reader that stops reading while a worker thread runs: no 'error' event, the run's code", async () => {
    // Node pipes a worker thread's stdout into this process's, with an error listener of its own
    // that removes itself and raises the error again (as when a log of PARALLEL_MIN or more is
    // read by worker threads): a thread that runs while the report is written stands for them.
    const many = Array.from({ length: 3000 }, (_, i) => REGISTER(`10.2.${i >> 8}.${i & 255}`));
    const log = file("many-threaded.log", many.join(""));
    const script = file(
      "with-worker.ts",
      'import { Worker } from "node:worker_threads";\n' +
        `import { main } from ${JSON.stringify(SIPCHECK)};\n` +
        'const worker = new Worker("setInterval(() => {}, 1000)", { eval: true });\n' +
        `const code = await main(["-n", "--json", "-t", "1", ${JSON.stringify(log)}]);\n` +
        "await worker.terminate();\n" +
        "process.exitCode = code;\n",
    );
    const argv = RUNTIME === "deno"
      ? [Deno.execPath(), "run", "--no-prompt", "--allow-read", "--allow-sys", script]
      : [process.execPath, script];
    const { code, stderr } = await runClosing(argv, "stdout");
    assert.equal(stderr, "");
    assert.equal(code, 0);
  });
  test("a reader of standard error that goes away changes nothing: the run's code", async () => {
    const log = file("one.log", REGISTER("203.0.113.9"));
    // Its warning about the missing log cannot be written.
    const argv = cliCommand(["--dry-run", "-t", "1", log, join(dir.path, "missing.log")]);
    const { code, stdout } = await runClosing(argv, "stderr");
    assert.equal(code, 66, stdout);
    assert.match(stdout, /^would ban +203\.0\.113\.9 {2}1 failure\n/);
  });
  test("a non-blocking pipe that fills up: Node waits, Deno says so; nothing is garbled", (t) => {
    // python3 makes the pipe non-blocking (as another program sharing it might) and reads slowly.
    const reader = [
      "import fcntl, os, subprocess, sys, time",
      "r, w = os.pipe()",
      "fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)",
      "p = subprocess.Popen(sys.argv[1:], stdout=w)",
      "os.close(w)",
      "time.sleep(0.5)",
      "data = b''",
      "while True:",
      "    b = os.read(r, 4096)",
      "    if not b: break",
      "    data += b",
      "    time.sleep(0.001)",
      "sys.stdout.buffer.write(data)",
      "sys.exit(p.wait())",
    ].join("\n");
    if (run(["python3", "-c", "pass"]).code !== 0) return t.skip("needs python3");
    const lines = Array.from({ length: 6000 }, (_, i) => REGISTER(`10.9.${i >> 8}.${i & 255}`));
    const log = file("nonblocking.log", lines.join(""));
    const whole = sipcheck(["--dry-run", "--json", log]).stdout;
    const ran = run(["python3", "-c", reader, ...cliCommand(["--dry-run", "--json", log])]);
    assert.equal(ran.code, 0, ran.stderr);
    if (RUNTIME === "node") {
      assert.equal(ran.stdout, whole);
      assert.equal(ran.stderr, "");
    } else {
      assert.ok(whole.startsWith(ran.stdout), "what was written is the start of the report");
      assert.ok(ran.stdout.length < whole.length);
      assert.equal(ran.stderr, "sipcheck: cannot write to standard output: EAGAIN\n");
    }
  });
  test("output to a full disk (/dev/full): one line, the run's code", async () => {
    const log = file("two.log", REGISTER("203.0.113.9") + REGISTER("2001:db8::9"));
    for (const args of [["--json"], []]) {
      // sh opens /dev/full (Deno's tests may not open devices themselves).
      const script = 'exec "$@" > /dev/full';
      const argv = ["sh", "-c", script, "sh", ...cliCommand(["--dry-run", ...args, log])];
      const { code, stderr } = await runClosing(argv, null);
      assert.equal(code, 0, `${args}: ${stderr}`);
      assert.equal(stderr, "sipcheck: cannot write to standard output: ENOSPC\n", `${args}`);
    }
  });

  test("--help and --version", () => {
    const help = sipcheck(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /Usage:\n {2}sipcheck\.ts \[options\] \[LOG \.\.\.\]/);
    assert.equal(help.stderr, "", "no warnings from the runtime either");
    const version = sipcheck(["-V"]);
    assert.match(version.stdout, /^sipcheck \d+\.\d+\.\d+\n$/);
  });

  test("the demo log, dry run: the offenders, then a summary", () => {
    const ran = sipcheck(["-n", fixture("messages.log")]);
    assert.equal(ran.code, 0);
    assert.equal(ran.stderr, "");
    assert.equal(
      ran.stdout,
      "would ban       203.0.113.50     420 failures\n" +
        "would ban       2001:db8:bad::7  260 failures\n" +
        "ignored         127.0.0.1        250 failures\n" +
        "would ban       198.51.100.23    230 failures\n" +
        "sipcheck: 1 file, 2330 lines, 1272 failures from 7 addresses (threshold 200, dry run): " +
        "3 would ban, 1 ignored\n",
    );
  });

  test("--json: one object, every address, highest count first", () => {
    const json = report(["-n", fixture("messages.log")]);
    assert.equal(json.files, 1);
    assert.equal(json.lines, 2330);
    assert.equal(json.failures, 1272);
    assert.equal(json.threshold, 200);
    assert.equal(json.dryRun, true);
    assert.equal(json.addresses.length, 7);
    const failures = json.addresses.map((a: { failures: number }) => a.failures);
    assert.deepEqual(failures, [...failures].sort((a, b) => b - a));
    assert.deepEqual(json.addresses.at(-1), {
      ip: "203.0.113.99",
      failures: 12,
      action: "below-threshold",
    });
  });

  test("-t and -i change the decisions; -q prints only the bans", () => {
    const ran = sipcheck([
      "-n",
      "-q",
      "-t",
      "50",
      "-i",
      "203.0.113.0/24",
      "--ignore",
      "2001:db8:bad::/48",
      fixture("messages.log"),
    ]);
    assert.equal(ran.code, 0);
    assert.equal(ran.stdout, "would ban       198.51.100.23  230 failures\n");
  });

  test("several logs add up; - reads standard input; a log named twice is read once", () => {
    const log = file("two.log", REGISTER("203.0.113.7").repeat(150));
    const other = file("three.log", REGISTER("203.0.113.7").repeat(150));
    const json = report(["-n", log, "-", other], REGISTER("203.0.113.7").repeat(10));
    assert.equal(json.files, 3);
    assert.deepEqual(json.addresses, [{ ip: "203.0.113.7", failures: 310, action: "would-ban" }]);
    const twice = report(["-n", log, "-", log], REGISTER("203.0.113.7").repeat(10));
    assert.equal(twice.files, 2);
    assert.deepEqual(twice.addresses, [
      { ip: "203.0.113.7", failures: 160, action: "below-threshold" },
    ]);
  });

  describe("a log that is not a regular file is read to its end, as standard input is", () => {
    // Larger than a pipe's buffer, so that it takes many reads; fstat says 0 bytes for a pipe.
    const lines = Array.from({ length: 3000 }, (_, i) => REGISTER(`10.3.${i >> 8}.${i & 255}`));
    const text = readFileSync(fixture("messages.log"), "latin1") + lines.join("");
    const log = file("piped.log", Buffer.from(text, "latin1"));
    const expected = report(["-n", "-"], Buffer.from(text, "latin1"));
    test("the log holds what is tested", () => {
      assert.ok(expected.lines > 3000 && expected.failures > 3000, JSON.stringify(expected));
    });
    test("a FIFO", async () => {
      const fifo = join(dir.path, "fifo");
      assert.equal(run(["mkfifo", fifo]).code, 0);
      const writer = spawn("sh", ["-c", 'cat "$1" > "$2"', "sh", log, fifo], { stdio: "ignore" });
      const closed = new Promise((resolve) => writer.on("close", resolve));
      const ran = sipcheck(["-n", "--json", fifo]);
      assert.equal(await closed, 0);
      assert.equal(ran.stderr, "");
      assert.equal(ran.code, 0);
      assert.deepEqual(JSON.parse(ran.stdout), expected);
    });
    test("/dev/stdin when standard input is a pipe", () => {
      // Deno lets a program open /dev/stdin only with every permission (`-` needs none).
      // sh makes the pipe: Node's spawnSync gives a child a socket, which cannot be opened.
      const args = ["-n", "--json", "/dev/stdin"];
      const argv = RUNTIME === "deno" ? cliCommand(args, ["--allow-all"]) : cliCommand(args);
      const ran = run(["sh", "-c", 'log=$1; shift; cat "$log" | "$@"', "sh", log, ...argv]);
      assert.equal(ran.stderr, "");
      assert.equal(ran.code, 0);
      assert.deepEqual(JSON.parse(ran.stdout), expected);
    });
    test("bash's process substitution, <(cat log)", () => {
      const script = 'log=$1; shift; "$@" <(cat "$log")';
      const ran = run(["bash", "-c", script, "bash", log, ...cliCommand(["-n", "--json"])]);
      assert.equal(ran.stderr, "");
      assert.equal(ran.code, 0);
      assert.deepEqual(JSON.parse(ran.stdout), expected);
    });
    test("watch refuses it, in one line: 66", () => {
      const fifo = join(dir.path, "watched-fifo");
      assert.equal(run(["mkfifo", fifo]).code, 0);
      for (const path of [fifo, "/dev/null"]) {
        const ran = sipcheck(["watch", "-n", path]);
        assert.equal(ran.code, 66);
        assert.equal(
          ran.stderr,
          `sipcheck: cannot watch "${path}": not a regular file (a pipe, FIFO, device or socket); ` +
            'pipe it into "sipcheck watch -" instead\n',
        );
      }
    });
  });

  describe("a gzip-compressed log (messages.1.gz) is read decompressed", () => {
    const lines = Array.from({ length: 3000 }, (_, i) => REGISTER(`10.4.${i >> 8}.${i & 255}`));
    const text = Buffer.from(
      readFileSync(fixture("messages.log"), "latin1") + lines.join(""),
      "latin1",
    );
    const expected = report(["-n", "-"], text);
    // Two members, as `cat a.gz b.gz` makes: gzip reads them as one.
    const gzipped = Buffer.concat([
      gzipSync(text.subarray(0, 100_000)),
      gzipSync(text.subarray(100_000)),
    ]);
    const log = file("messages.1.gz", gzipped);
    test("the log holds what is tested", () => {
      assert.ok(expected.lines > 3000 && expected.failures > 3000, JSON.stringify(expected));
    });
    test("as a file, on standard input, and through a pipe: the counts of the plain log", () => {
      assert.deepEqual(report(["-n", log]), expected);
      assert.deepEqual(report(["-n", "-"], gzipped), expected);
      const ran = run([
        "bash",
        "-c",
        'log=$1; shift; "$@" <(cat "$log")',
        "bash",
        log,
        ...cliCommand(["-n", "--json"]),
      ]);
      assert.equal(ran.stderr, "");
      assert.deepEqual(JSON.parse(ran.stdout), expected);
    });
    test("cut short: 66, one line, the other logs still count", () => {
      const cut = file("cut.log.gz", gzipped.subarray(0, gzipped.length >> 1));
      const other = file("other.log", REGISTER("203.0.113.77"));
      const ran = sipcheck(["-n", "--json", "-t", "1", cut, other]);
      assert.equal(ran.code, 66);
      assert.equal(
        ran.stderr,
        `sipcheck: cannot read "${cut}": not whole gzip data (unexpected end of file)\n`,
      );
      const json = JSON.parse(ran.stdout);
      assert.equal(json.files, 1);
      assert.ok(json.addresses.some((a: { ip: string }) => a.ip === "203.0.113.77"));
    });
    test("watch refuses it, in one line: 66", () => {
      const ran = sipcheck(["watch", "-n", log]);
      assert.equal(ran.code, 66);
      assert.equal(
        ran.stderr,
        `sipcheck: cannot watch "${log}": it is gzip-compressed, and nothing is appended to it; ` +
          `scan it instead ("sipcheck ${log}")\n`,
      );
    });
  });

  test("a missing file or a directory: 66, one line each, the other logs still count", () => {
    const log = file("good.log", REGISTER("203.0.113.8").repeat(200));
    const missing = join(dir.path, "missing.log");
    const ran = sipcheck(["-n", "--json", missing, dir.path, log]);
    assert.equal(ran.code, 66);
    assert.equal(
      ran.stderr,
      `sipcheck: cannot read "${missing}": no such file\n` +
        `sipcheck: cannot read "${dir.path}": is a directory\n`,
    );
    const json = JSON.parse(ran.stdout);
    assert.equal(json.files, 1);
    assert.equal(json.errors.length, 2);
    assert.deepEqual(json.addresses[0], { ip: "203.0.113.8", failures: 200, action: "would-ban" });
  });

  test("empty file, binary garbage and invalid UTF-8: scanned, nothing counted from them", () => {
    const garbage = Buffer.alloc(1 << 20);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 2654435761) >>> 24;
    const invalid = Buffer.concat([
      Buffer.from([0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0xf0, 0x90, 0x28, 0xbc, 0x0a]),
      Buffer.from(REGISTER("203.0.113.9").replace("<sip:1@", "<sip:\u00e9\u00ff@"), "latin1"),
    ]);
    const json = report([
      "-n",
      file("empty.log", ""),
      file("garbage.bin", garbage),
      file("invalid.log", invalid),
    ]);
    assert.equal(json.files, 3);
    assert.deepEqual(json.addresses, [{
      ip: "203.0.113.9",
      failures: 1,
      action: "below-threshold",
    }]);
  });

  test("CRLF line endings count the same as LF", () => {
    const text = readFileSync(fixture("messages.log"), "latin1");
    const lf = report(["-n", fixture("messages.log")]);
    const crlf = report(["-n", file("crlf.log", text.replaceAll("\n", "\r\n"))]);
    assert.deepEqual(crlf.addresses, lf.addresses);
    assert.equal(crlf.lines, lf.lines);
  });

  test("a 100 MB line without a line feed is skipped, the lines around it count", () => {
    const path = join(dir.path, "long.log");
    const fd = openSync(path, "w");
    writeSync(fd, REGISTER("203.0.113.10"));
    const chunk = Buffer.alloc(1 << 20, "A");
    for (let i = 0; i < 100; i++) writeSync(fd, chunk);
    writeSync(fd, "\n" + REGISTER("203.0.113.11"));
    closeSync(fd);
    const json = report(["-n", path]);
    assert.equal(json.lines, 3);
    assert.equal(json.longLines, 1);
    assert.deepEqual(json.addresses.map((a: { ip: string }) => a.ip), [
      "203.0.113.10",
      "203.0.113.11",
    ]);
  });

  const usage: [string[], string][] = [
    [["-n", "-t", "0"], 'sipcheck: --threshold must be a positive whole number, not "0"\n'],
    [["-n", "--threshold=-1"], 'sipcheck: --threshold must be a positive whole number, not "-1"\n'],
    [["-n", "-t", "abc"], 'sipcheck: --threshold must be a positive whole number, not "abc"\n'],
    [
      ["-n", "-i", "10.0.0.0/40"],
      'sipcheck: --ignore takes an IP address or CIDR block, not "10.0.0.0/40"\n',
    ],
    [
      ["-n", "-i", "not-an-ip"],
      'sipcheck: --ignore takes an IP address or CIDR block, not "not-an-ip"\n',
    ],
    [
      ["list", "-t", "5"],
      'sipcheck: --threshold (-t) is only for a scan and "watch", not for "list"\n',
    ],
    [
      ["clear", "-i", "203.0.113.1"],
      'sipcheck: --ignore (-i) is only for a scan and "watch", not for "clear"\n',
    ],
    [
      ["clear", "--json"],
      'sipcheck: --json is only for a scan, "watch" and "list", not for "clear"\n',
    ],
  ];
  for (const [args, stderr] of usage) {
    test(`usage error: ${args.join(" ")} → 64`, () => {
      const ran = sipcheck(args);
      assert.equal(ran.code, 64);
      assert.equal(ran.stdout, "");
      assert.equal(ran.stderr, stderr);
    });
  }
  test("usage errors from the option parser are one line too", () => {
    for (const args of [["-t", "-1"], ["--bogus"], ["-t"], ["list", "extra"]]) {
      const ran = sipcheck(args);
      assert.equal(ran.code, 64, args.join(" "));
      assert.equal(ran.stderr.split("\n").length, 2, ran.stderr);
      assertCleanErrors(ran.stderr);
    }
  });
});

test("the README runs Node on the file installed as sipcheck.ts (Node strips only .ts)", () => {
  const readme = readFileSync(join(dirname(SIPCHECK), "README.md"), "utf8");
  const installed = [...readme.matchAll(/^install -m 755 sipcheck\.ts (\S+)$/gm)].map((m) => m[1]);
  const commands = [...readme.matchAll(/\/usr\/bin\/node (\S+)/g)].map((m) => m[1]);
  assert.ok(commands.length >= 2, "the crontab and systemd lines");
  for (const path of commands) {
    assert.ok(path.endsWith(".ts"), path);
    assert.ok(installed.includes(path), `${path} is installed by the README`);
  }
});

describe(
  "the shebang's permission flags (Deno)",
  { skip: RUNTIME !== "deno" && "Deno only" },
  () => {
    const flags = shebangFlags();
    test("are narrow: no --allow-all, no blanket read, write, run or env", () => {
      for (const flag of flags) {
        assert.match(flag, /^(-[RWS]|--allow-run)=\S+$/, flag);
      }
      assert.ok(
        flags.includes("-R=/var/log/asterisk,/run/sipcheck.lock,/etc/asterisk,/usr/local/bin"),
      );
    });
    test("fit in the 256 bytes Linux reads of a #! line, and work from it", () => {
      const first = readFileSync(SIPCHECK, "utf8").split("\n")[0];
      assert.ok(Buffer.byteLength(first) + 1 <= 256, `${Buffer.byteLength(first)} bytes`);
      const bin = tempDir();
      try {
        // As installed: executed directly, its first line running Deno (found on PATH).
        const installed = join(bin.path, "sipcheck");
        copyFileSync(SIPCHECK, installed);
        chmodSync(installed, 0o755);
        const path = `${dirname(Deno.execPath())}:/usr/bin:/bin`;
        const ran = run(
          ["/usr/bin/env", `PATH=${path}`, installed, "-n", "-q", "-"],
          REGISTER("203.0.113.13").repeat(200),
        );
        assert.equal(ran.stderr, "");
        assert.equal(ran.code, 0);
        assert.match(ran.stdout, /^would ban +203\.0\.113\.13 +200 failures\n$/);
      } finally {
        bin.remove();
      }
    });
    test("let an installed sipcheck read itself, so that worker threads can run it", () => {
      // The README installs it in /usr/local/bin; a worker thread reads the file it runs.
      const readme = readFileSync(join(dirname(SIPCHECK), "README.md"), "utf8");
      const installed = /^install -m 755 sipcheck\.ts (\S+)$/m.exec(readme)?.[1];
      assert.equal(installed, "/usr/local/bin/sipcheck");
      const read = flags.find((flag) => flag.startsWith("-R="))?.slice(3).split(",") ?? [];
      assert.ok(read.includes(dirname(installed)), read.join(","));
    });
    test("read a log of PARALLEL_MIN or more, as installed, with nothing on stderr", () => {
      // Installed as `sipcheck` in a directory that stands for /usr/local/bin (a name as long, so
      // that the first line keeps its length) and run by its first line, it reads such a log on
      // every core. A worker thread that failed to run it (Deno 2.0.0 ran a file without `.ts` as
      // CommonJS) would write to stderr.
      const bin = mkdtempSync("/tmp/sc-");
      try {
        assert.equal(bin.length, "/usr/local/bin".length);
        const installed = join(bin, "sipcheck");
        const source = readFileSync(SIPCHECK, "utf8");
        const first = source.slice(0, source.indexOf("\n"));
        const moved = first.replace(",/usr/local/bin ", `,${bin} `);
        assert.ok(moved !== first && Buffer.byteLength(moved) === Buffer.byteLength(first));
        writeFileSync(installed, moved + source.slice(first.length), { mode: 0o755 });
        const log = join(bin, "messages");
        const block = Buffer.from(
          BENIGN.repeat(99) + REGISTER("203.0.113.21") + BENIGN.repeat(99) +
            REGISTER("[2001:db8::21]"),
        );
        const blocks = Math.ceil(PARALLEL_MIN / block.length);
        writeFileSync(log, Buffer.alloc(blocks * block.length, block));
        const path = `${dirname(Deno.execPath())}:/usr/bin:/bin`;
        const args = ["-n", "--json", "--threshold", "1", log];
        const ran = run(["/usr/bin/env", `PATH=${path}`, installed, ...args]);
        assert.equal(ran.stderr, "");
        assert.equal(ran.code, 0);
        const got = JSON.parse(ran.stdout);
        assert.equal(got.lines, blocks * 200);
        assert.deepEqual(
          got.addresses.map((a: { ip: string; failures: number }) => [a.ip, a.failures]).sort(),
          [["2001:db8::21", blocks], ["203.0.113.21", blocks]],
        );
      } finally {
        rmSync(bin, { recursive: true, force: true });
      }
    });
    test("are enough for help, a dry run of standard input, and a clear refusal elsewhere", () => {
      const help = run(cliCommand(["--help"], flags));
      assert.equal(help.code, 0);
      const stdin = run(cliCommand(["-n", "--json", "-"], flags), REGISTER("203.0.113.12"));
      assert.equal(stdin.code, 0, stdin.stderr);
      assert.equal(JSON.parse(stdin.stdout).addresses[0].ip, "203.0.113.12");
      const outside = run(cliCommand(["-n", fixture("messages.log")], flags));
      assert.equal(outside.code, 66);
      assert.equal(
        outside.stderr,
        `sipcheck: cannot read "${fixture("messages.log")}": not allowed by Deno's permissions ` +
          "(add it to --allow-read)\n",
      );
    });
    test("a large log is read on every core when the file may read itself, else by one thread", () => {
      // A worker thread runs the file it is in, which Deno lets it read only with --allow-read for
      // that file; without it sipcheck reads on alone, with the same counts and nothing on stderr.
      const log = file("parallel.log", readFileSync(fixture("messages.log")));
      const script = file(
        "scan-parts.ts",
        `import { newTally, scanFile } from ${JSON.stringify(SIPCHECK)};\n` +
          "const tally = newTally();\n" +
          `await scanFile(${JSON.stringify(log)}, tally, ` +
          "{ parallelMin: 0, splitMin: 0, waitForReaders: Deno.args[0] === 'wait' });\n" +
          "console.log(JSON.stringify({ lines: tally.lines, counts: [...tally.counts] }));\n",
      );
      const deno = Deno.execPath();
      const alone = run([deno, "run", `-R=${log}`, "-S", script]);
      const threads = run([deno, "run", `-R=${log},${SIPCHECK}`, "-S", script, "wait"]);
      assert.equal(alone.stderr, "");
      assert.equal(threads.stderr, "");
      assert.deepEqual(JSON.parse(alone.stdout), JSON.parse(threads.stdout));
      assert.ok(JSON.parse(alone.stdout).counts.length > 3, "the log holds what is tested");
    });
    test("a bare name is looked up in /var/log/asterisk", () => {
      const ran = run(cliCommand(["-n", "no-such-log-here"], flags));
      assert.equal(ran.code, 66);
      assert.match(
        ran.stderr,
        /cannot read "\/var\/log\/asterisk\/no-such-log-here": no such file/,
      );
    });
  },
);

describe("file permissions", () => {
  test("a directory that cannot be listed still gives one clean line", () => {
    const sub = join(dir.path, "sub");
    mkdirSync(sub);
    const ran = sipcheck(["-n", join(sub, "x.log")]);
    assert.equal(ran.code, 66);
    assertCleanErrors(ran.stderr);
  });
});
