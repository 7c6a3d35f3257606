/**
 * `sipcheck watch` as a real process under the runtime that runs these tests: it follows a log,
 * answers SIGHUP, stops on SIGTERM and SIGINT with exit 0 (also while it reads standard input,
 * and when they come during its first read of a big log),
 * stops by itself when standard input closes, needs no Deno permission beyond the shebang's, and,
 * as root in a private network namespace, bans with the real iptables on an appended line while
 * holding the lock that makes a cron run step back. Waits are for output, with a generous
 * deadline; nothing asserts timings.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { appendFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { gzipSync } from "node:zlib";
import { after, describe, test } from "node:test";
import {
  cliCommand,
  firewallSkipReason,
  inNamespace,
  namespaceCommand,
  REGISTER,
  RUNTIME,
  shebangFlags,
  shellQuote,
  sipcheck,
  tempDir,
} from "./helpers.ts";

const dir = tempDir();
after(dir.remove);

/** Writes a log in the temp dir. */
function log(name: string, text: string): string {
  const path = join(dir.path, name);
  writeFileSync(path, text);
  return path;
}

/** A watcher process, its output so far, and a way to wait for a line. */
function spawnWatcher(args: string[], flags?: string[]) {
  const argv = cliCommand(["watch", ...args], flags);
  const child: ChildProcess = spawn(argv[0], argv.slice(1), {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout!.on("data", (data) => out += data);
  child.stderr!.on("data", (data) => err += data);
  const exited = new Promise<number | string>((resolve) =>
    child.on("exit", (code, signal) => resolve(code ?? signal ?? -1))
  );
  return {
    child,
    exited,
    /** Sends a signal. (Not child.kill: Deno's child_process then reports the signal as the
     * cause of the exit, whatever the exit code was.) */
    signal(name: NodeJS.Signals): void {
      process.kill(child.pid!, name);
    },
    out: () => out,
    err: () => err,
    /** Waits until stdout matches (at most 30 s; a failing wait kills the watcher). */
    async waitFor(pattern: RegExp): Promise<void> {
      for (let i = 0; i < 1500 && !pattern.test(out); i++) {
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      if (!pattern.test(out)) {
        child.kill("SIGKILL");
        assert.fail(`no ${pattern} in the watcher's output:\n${out}\nstderr:\n${err}`);
      }
    },
  };
}

/** Lines in {@link bigLog}. */
let bigLines = 0;
let bigPath = "";

/** A log of about 200 MB (failures of 10,000 addresses, about 150 each) that takes the watcher a
 * good fraction of a second to read at start; written once. */
function bigLog(): string {
  if (bigPath) return bigPath;
  let block = "";
  for (let i = 0; i < 10_000; i++) block += REGISTER(`10.0.${i >> 8}.${i & 255}:5060`);
  const repeat = Math.ceil(200e6 / block.length);
  bigLines = repeat * 10_000;
  bigPath = log("big.log", block.repeat(repeat));
  return bigPath;
}

/** Waits until process `pid` has `path` open (its first read has begun): at most 30 s. (Through
 * ls: Deno lets only --allow-all read /proc/PID/fd.) */
async function untilOpen(pid: number, path: string): Promise<void> {
  for (let i = 0; i < 3000; i++) {
    const listed = spawnSync("/bin/ls", ["-l", `/proc/${pid}/fd`], { encoding: "utf8" });
    if (listed.stdout?.includes(` -> ${path}\n`)) return;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  assert.fail(`process ${pid} never opened ${path}`);
}

/** Why a signal test proves nothing: the first read was over before the signal was sent. */
const TOO_FAST = "the first read was over before the signal: the big log is too small here";

describe(`sipcheck.ts watch under ${RUNTIME}`, () => {
  test("follows a log, answers SIGHUP, and stops on SIGTERM with exit 0", async () => {
    const path = log("follow.log", REGISTER("203.0.113.1:5060").repeat(2));
    const w = spawnWatcher(["-n", "-t", "3", "--json", path]);
    await w.waitFor(/"action":"watching"/);
    appendFileSync(path, REGISTER("203.0.113.1:5060"));
    await w.waitFor(/"would-ban"/);
    w.signal("SIGHUP");
    appendFileSync(path, REGISTER("[2001:db8::1]:5060").repeat(3));
    await w.waitFor(/"ip":"2001:db8::1"/);
    w.signal("SIGTERM");
    assert.equal(await w.exited, 0, w.err());
    assert.equal(w.err(), "");
    const lines = w.out().trim().split("\n").map((line) => JSON.parse(line));
    assert.deepEqual(lines.map((line) => line.action), [
      "watching",
      "would-ban",
      "would-ban",
      "stopped",
    ]);
    assert.deepEqual(
      lines.slice(1, 3).map((line) => [line.ip, line.failures, line.family]),
      [["203.0.113.1", 3, "sip-register"], ["2001:db8::1", 3, "sip-register"]],
    );
    assert.equal(lines[3].reason, "SIGTERM");
    assert.equal(lines[3].lines, 6);
  });

  test("SIGHUP during the first read of a big log does not end it: it reopens, goes on", async () => {
    const path = bigLog();
    const small = log("after-big.log", "");
    const w = spawnWatcher(["-n", "-t", "1000", "--json", path, small]);
    await untilOpen(w.child.pid!, path);
    w.signal("SIGHUP");
    assert.equal(w.out(), "", TOO_FAST);
    await w.waitFor(/"action":"watching"/);
    appendFileSync(small, REGISTER("203.0.113.10").repeat(1000));
    await w.waitFor(/"would-ban","ip":"203\.0\.113\.10"/);
    w.signal("SIGTERM");
    assert.equal(await w.exited, 0, w.err());
    assert.equal(w.err(), "");
    const lines = w.out().trim().split("\n").map((line) => JSON.parse(line));
    assert.deepEqual(lines.map((line) => line.action), ["watching", "would-ban", "stopped"]);
    assert.equal(lines[0].lines, bigLines, "the first read went to the end");
    assert.deepEqual([lines[2].reason, lines[2].lines], ["SIGTERM", bigLines + 1000]);
  });

  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    test(`${signal} during the first read of a big log: it stops once that read is done, exit 0`, async () => {
      const path = bigLog();
      const w = spawnWatcher(["-n", "-t", "1000", "--json", path]);
      await untilOpen(w.child.pid!, path);
      w.signal(signal);
      assert.equal(w.out(), "", TOO_FAST);
      assert.equal(await w.exited, 0, w.err());
      assert.equal(w.err(), "");
      const lines = w.out().trim().split("\n").map((line) => JSON.parse(line));
      assert.deepEqual(lines.map((line) => line.action), ["watching", "stopped"]);
      assert.deepEqual([lines[1].reason, lines[1].lines], [signal, bigLines]);
    });
  }

  test("SIGINT stops it too; the text output has the time, address, count and family", async () => {
    const path = log("sigint.log", REGISTER("203.0.113.2").repeat(4));
    const w = spawnWatcher(["-n", "-t", "4", path]);
    await w.waitFor(/watching/);
    w.signal("SIGINT");
    assert.equal(await w.exited, 0);
    const [ban, watching, stopped] = w.out().trim().split("\n");
    assert.match(
      ban,
      /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z {2}would ban {7}203\.0\.113\.2 {2}4 failures \(sip-register\)$/,
    );
    assert.match(watching, /sipcheck: watching .*sigint\.log \(threshold 4, dry run\): 4 lines/);
    assert.match(stopped, /sipcheck: stopped \(SIGINT\): 4 lines, 4 failures, 0 banned/);
  });

  test("standard input is followed until it closes, then it exits 0", () => {
    const ran = sipcheck(
      ["watch", "-n", "-q", "-t", "2", "-"],
      REGISTER("203.0.113.3").repeat(2) + REGISTER("203.0.113.4"),
    );
    assert.equal(ran.code, 0, ran.stderr);
    assert.equal(ran.stderr, "");
    assert.match(ran.stdout, /^\S+ {2}would ban +203\.0\.113\.3 {2}2 failures \(sip-register\)\n$/);
  });

  test("gzip data on standard input is refused in one line, exit 66", () => {
    const ran = sipcheck(["watch", "-n", "-q", "-t", "1", "-"], gzipSync(REGISTER("203.0.113.3")));
    assert.equal(ran.code, 66, ran.stderr);
    assert.equal(
      ran.stderr,
      'sipcheck: cannot watch standard input: it is gzip-compressed; scan it instead ("sipcheck -")\n',
    );
    assert.equal(ran.stdout, "");
    const plain = sipcheck(["watch", "-n", "-q", "-t", "1", "-"], "\x1f");
    assert.deepEqual([plain.code, plain.stderr], [0, ""], "one byte like gzip's first is no gzip");
  });

  test("SIGTERM while standard input is still open: exit 0", async () => {
    const w = spawnWatcher(["-n", "-t", "2", "--json", "-"]);
    w.child.stdin!.write(REGISTER("203.0.113.5").repeat(2));
    await w.waitFor(/"would-ban"/);
    w.signal("SIGTERM");
    assert.equal(await w.exited, 0, w.err());
    assert.match(w.out(), /"action":"stopped".*"reason":"SIGTERM"/);
  });

  test("an unreadable log is reported once, and read when it appears", async () => {
    const path = join(dir.path, "later.log");
    const w = spawnWatcher(["-n", "-t", "1", path]);
    await w.waitFor(/watching/);
    writeFileSync(path, REGISTER("203.0.113.6"));
    await w.waitFor(/would ban +203\.0\.113\.6/);
    w.signal("SIGTERM");
    assert.equal(await w.exited, 0);
    assert.equal(w.err(), `sipcheck: cannot read "${path}": no such file; trying again\n`);
  });
});

describe(
  "the shebang's permission flags are enough for watch (Deno)",
  { skip: RUNTIME !== "deno" && "Deno only" },
  () => {
    test("following a log, SIGHUP and SIGTERM need nothing more than the cron run", async () => {
      // The same flags, with this test's directory where /var/log/asterisk is.
      const flags = shebangFlags().map((flag) => flag.replace("/var/log/asterisk", dir.path));
      assert.notDeepEqual(flags, shebangFlags());
      const path = log("flags.log", "");
      const w = spawnWatcher(["-n", "-t", "2", path], flags);
      await w.waitFor(/watching/);
      appendFileSync(path, REGISTER("203.0.113.7").repeat(2));
      await w.waitFor(/would ban +203\.0\.113\.7/);
      w.signal("SIGHUP");
      appendFileSync(path, REGISTER("203.0.113.8").repeat(2));
      await w.waitFor(/would ban +203\.0\.113\.8/);
      w.signal("SIGTERM");
      assert.equal(await w.exited, 0, w.err());
      assert.equal(w.err(), "", "no permission prompt or error");
    });
    test("standard input with exactly the shebang's flags", async () => {
      const w = spawnWatcher(["-n", "-t", "1", "-"], shebangFlags());
      w.child.stdin!.write(REGISTER("203.0.113.9"));
      await w.waitFor(/would ban +203\.0\.113\.9/);
      w.signal("SIGTERM");
      assert.equal(await w.exited, 0, w.err());
      assert.equal(w.err(), "");
    });
  },
);

const skip = firewallSkipReason();

describe("a real ban in a private network namespace", { skip: skip ?? false }, () => {
  test("an appended line bans within the watch; a cron run meanwhile exits 75; SIGTERM frees the lock", () => {
    const path = log(
      "ns.log",
      REGISTER("203.0.113.20:5060").repeat(4) + REGISTER("[2001:db8::20]:5060").repeat(4),
    );
    const crossing = REGISTER("203.0.113.20:5060") + REGISTER("[2001:db8::20]:5060");
    const watcher = namespaceCommand(["watch", "-t", "5", path]);
    const ran = inNamespace([
      `wait_for() { i=0; until grep -q "$1" /run/out; do i=$((i+1)); [ $i -gt 600 ] && { echo "no $1"; cat /run/out /run/err; exit 98; }; sleep 0.05; done; }`,
      `${watcher} > /run/out 2> /run/err & pid=$!`,
      "wait_for watching",
      'echo "lock: $(cat /run/sipcheck.lock)" | sed "s/ $pid / PID /"; echo ==',
      `sipcheck -q ${shellQuote(path)} 2>&1; echo "cron exit $?"; echo ==`,
      "iptables -S; ip6tables -S; echo ==",
      `printf '%s' ${shellQuote(crossing)} >> ${shellQuote(path)}`,
      "wait_for 2001:db8::20",
      "iptables -S sipcheck; ip6tables -S sipcheck; echo ==",
      'kill -TERM $pid; wait $pid; echo "watch exit $?"',
      '[ -e /run/sipcheck.lock ] && echo "lock left" || echo "lock released"; echo ==',
      "cat /run/out; echo ==; cat /run/err",
    ].join("\n"));
    assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
    const [lock, cron, before, rules, end, out, err] = ran.stdout.split("==\n");
    assert.equal(lock, "lock: PID watch\n", "the lock holds the watcher's pid and mode");
    assert.match(cron, /a sipcheck watcher is active \(pid \d+, lock \/run\/sipcheck\.lock\)/);
    assert.match(cron, /cron exit 75\n$/);
    assert.doesNotMatch(before, /sipcheck/, "nothing banned below the threshold");
    assert.equal(
      rules,
      "-N sipcheck\n-A sipcheck -s 203.0.113.20/32 -j DROP\n" +
        "-N sipcheck\n-A sipcheck -s 2001:db8::20/128 -j DROP\n",
    );
    assert.equal(end, "watch exit 0\nlock released\n");
    const lines = out.trim().split("\n");
    assert.match(lines[0], /sipcheck: watching .*ns\.log \(threshold 5\): 8 lines, 8 failures/);
    assert.match(lines[1], /Z {2}banned {10}203\.0\.113\.20 {2}5 failures \(sip-register\)$/);
    assert.match(lines[2], /Z {2}banned {10}2001:db8::20 {2}5 failures \(sip-register\)$/);
    assert.match(lines[3], /sipcheck: stopped \(SIGTERM\): 10 lines, 10 failures, 2 banned/);
    assert.equal(err, "");
  });

  test("SIGTERM during the first read: exit 0, the stopped line, the lock released", () => {
    const path = bigLog();
    const watcher = namespaceCommand(["watch", "-t", "1000", path]);
    const ran = inNamespace([
      `${watcher} > /run/out 2> /run/err & pid=$!`,
      `i=0; until ls -l /proc/$pid/fd 2>/dev/null | grep -q ${
        shellQuote(path)
      }; do i=$((i+1)); [ $i -gt 6000 ] && { echo "never opened"; exit 98; }; sleep 0.005; done`,
      '[ -s /run/out ] && echo "output before the signal"',
      '[ -e /run/sipcheck.lock ] && echo "locked"',
      'kill -TERM $pid; wait $pid; echo "watch exit $?"',
      '[ -e /run/sipcheck.lock ] && echo "lock left" || echo "lock released"; echo ==',
      "cat /run/out; echo ==; cat /run/err",
    ].join("\n"));
    assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
    const [end, out, err] = ran.stdout.split("==\n");
    assert.equal(end, "locked\nwatch exit 0\nlock released\n", TOO_FAST);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 2, out);
    assert.match(
      lines[0],
      new RegExp(`sipcheck: watching .*big\\.log \\(threshold 1000\\): ${bigLines} lines`),
    );
    assert.match(lines[1], new RegExp(`sipcheck: stopped \\(SIGTERM\\): ${bigLines} lines`));
    assert.equal(err, "");
  });

  test("the chain is read before every batch: a foreign rule, a deleted jump, a whole-table restore", () => {
    const path = log("reread.log", REGISTER("203.0.113.30").repeat(3));
    const watcher = namespaceCommand(["watch", "-t", "3", path]);
    const append = (address: string) =>
      `printf '%s' ${shellQuote(REGISTER(address).repeat(3))} >> ${shellQuote(path)}`;
    const ran = inNamespace([
      `wait_for() { i=0; until grep -q "$1" "$2"; do i=$((i+1)); [ $i -gt 600 ] && { echo "no $1"; cat /run/out /run/err; exit 98; }; sleep 0.05; done; }`,
      "iptables -P INPUT ACCEPT; iptables-save > /run/saved", // the table before sipcheck ran
      `${watcher} > /run/out 2> /run/err & pid=$!`,
      "wait_for watching /run/out",
      "iptables -I sipcheck 1 -s 198.51.100.0/24 -j ACCEPT",
      "iptables -D INPUT -p udp -m multiport --dports 5060,5061,4569,5038 -j sipcheck",
      append("198.51.100.7"),
      "wait_for 'did not write' /run/err",
      "iptables -S sipcheck; echo ==",
      "iptables -D sipcheck 1",
      "wait_for 198.51.100.7 /run/out",
      "iptables -S sipcheck; iptables -S INPUT; echo ==",
      "iptables-restore < /run/saved",
      append("203.0.113.31"),
      "wait_for 203.0.113.31 /run/out",
      "iptables -S sipcheck; iptables -S INPUT; echo ==",
      'kill -TERM $pid; wait $pid; echo "watch exit $?"; echo ==',
      "cat /run/out; echo ==; cat /run/err",
    ].join("\n"));
    assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
    const [refused, back, restored, exit, out, err] = ran.stdout.split("==\n");
    assert.equal(
      refused,
      "-N sipcheck\n-A sipcheck -s 198.51.100.0/24 -j ACCEPT\n-A sipcheck -s 203.0.113.30/32 -j DROP\n",
      "nothing added behind the ACCEPT",
    );
    const jumps = "-P INPUT ACCEPT\n" +
      "-A INPUT -p udp -m multiport --dports 5060,5061,4569,5038 -j sipcheck\n" +
      "-A INPUT -p tcp -m multiport --dports 5060,5061,4569,5038 -j sipcheck\n";
    assert.equal(
      back,
      "-N sipcheck\n-A sipcheck -s 203.0.113.30/32 -j DROP\n-A sipcheck -s 198.51.100.7/32 -j DROP\n" +
        jumps,
      "the udp jump is back, first",
    );
    assert.equal(
      restored.split("\n").filter((line) => line.includes("-j DROP")).sort().join("\n"),
      [
        "-A sipcheck -s 198.51.100.7/32 -j DROP",
        "-A sipcheck -s 203.0.113.30/32 -j DROP",
        "-A sipcheck -s 203.0.113.31/32 -j DROP",
      ].join("\n"),
      "the bans the restore took away are back",
    );
    assert.match(restored, /\n-A INPUT -p tcp .* -j sipcheck\n-A INPUT -p udp .* -j sipcheck\n$/);
    assert.equal(exit, "watch exit 0\n");
    const actions = out.trim().split("\n").map((line) => line.split(/ {2,}/).slice(1, 3).join(" "));
    assert.deepEqual(
      actions,
      [
        "banned 203.0.113.30",
        "sipcheck: watching " + path + " (threshold 3): 3 lines, 3 failures from 1 address so far",
        "banned 198.51.100.7",
        "banned 203.0.113.31",
        "banned 203.0.113.30",
        "banned 198.51.100.7",
        "sipcheck: stopped (SIGTERM): 9 lines, 9 failures, 5 banned since the start",
      ],
    );
    assert.match(
      err,
      /^sipcheck: iptables: the sipcheck chain holds a rule sipcheck did not write/,
    );
    assert.equal(err.split("\n").length, 2, err);
  });

  test("a reader of its output that goes away does not stop it banning", () => {
    const path = log("gone.log", REGISTER("203.0.113.21").repeat(2));
    const watcher = namespaceCommand(["watch", "-t", "3", path]);
    const ran = inNamespace([
      // head reads the first byte of the watcher's output and exits: every later write fails.
      "mkfifo /run/out",
      "head -c 1 < /run/out > /dev/null & reader=$!",
      `(sh -c 'echo $$ > /run/pid; exec "$@"' sh ${watcher} > /run/out 2> /run/err; echo "watch exit $?" > /run/exit) &`,
      `trap 'kill -TERM "$(cat /run/pid)" 2> /dev/null' EXIT`,
      "wait $reader",
      `printf '%s' ${shellQuote(REGISTER("203.0.113.21"))} >> ${shellQuote(path)}`,
      `i=0; until iptables -S sipcheck 2>/dev/null | grep -q 203.0.113.21; do i=$((i+1)); [ $i -gt 600 ] && { echo "no ban"; cat /run/err; exit 98; }; sleep 0.05; done`,
      "iptables -S sipcheck; echo ==",
      'kill -TERM "$(cat /run/pid)"',
      `i=0; until [ -s /run/exit ]; do i=$((i+1)); [ $i -gt 600 ] && { echo "no exit"; exit 97; }; sleep 0.05; done`,
      "cat /run/exit; echo ==; cat /run/err",
    ].join("\n"));
    assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
    const [rules, exit, err] = ran.stdout.split("==\n");
    assert.equal(rules, "-N sipcheck\n-A sipcheck -s 203.0.113.21/32 -j DROP\n");
    assert.equal(exit, "watch exit 0\n");
    assert.equal(err, "", "a reader that went away is not an error");
  });
});
