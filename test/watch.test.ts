/**
 * `sipcheck watch`: in-process watchers on real files in a temp dir (appends, partial lines,
 * every rotation style, deletion and re-creation, a missing log, standard input that closes, a
 * failing firewall, batching, the sliding window) against a fake iptables. The watcher is
 * synchronised with `polled()` (everything written before has been read), never with sleeps, and
 * nothing here asserts timings. The real process under signals and a real ban in a private
 * network namespace are in watch-cli.test.ts.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  appendFileSync,
  copyFileSync,
  mkdirSync,
  renameSync,
  symlinkSync,
  truncateSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  CHAIN,
  type Deps,
  EXIT,
  formatDuration,
  jumpRules,
  main,
  newTally,
  parseDuration,
  parseOptions,
  RETRY_MS,
  slidingWindow,
  startWatcher,
  type Watcher,
} from "../sipcheck.ts";
import { FakeFirewall, outputText, REGISTER, tempDir } from "./helpers.ts";

const dir = tempDir();
after(dir.remove);
let serial = 0;

/** A fresh path in the temp dir. */
function path(name = "messages"): string {
  return join(dir.path, `${++serial}`, name);
}

const IAX2 = (address: string) =>
  `[2026-11-25 08:30:00] WARNING[2401] chan_iax2.c: Host ${address}:4569 failed to authenticate as 1001\n`;
const AMI = (address: string) =>
  `[2026-11-25 08:40:00] NOTICE[2501] manager.c: ${address} failed to authenticate as 'admin'\n`;
const BENIGN =
  '[2026-11-25 08:04:00.000] VERBOSE[2290] pbx.c: Executing [s@macro-dial:1] Set("PJSIP/1-1", "X=1") in new stack\n';

/** `n` failure lines of `address`. */
const lines = (address: string, n: number, line = REGISTER) => line(address).repeat(n);

/** One line of `--json` output. */
interface Line {
  time: string;
  action: string;
  ip?: string;
  failures?: number;
  family?: string;
  [key: string]: unknown;
}

/** A watcher on `args` (always --json) with captured output and a fake firewall. It reads the
 * logs at once, so a firewall to prepare is passed in. */
function watching(
  args: string[],
  overrides: Partial<Deps> = {},
  firewall: FakeFirewall = new FakeFirewall(),
) {
  const out: string[] = [];
  const err: string[] = [];
  const deps: Deps = {
    stdout: (text) => void out.push(outputText(text)),
    stderr: (text) => void err.push(text),
    run: firewall.run,
    uid: () => 0,
    lockPath: join(dir.path, "unused.lock"),
    hostAddresses: () => ["192.0.2.10"],
    stdin: () => (async function* () {})(),
    ...overrides,
  };
  const watcher: Watcher = startWatcher(parseOptions(["watch", "--json", ...args]), deps);
  const output = (): Line[] =>
    out.join("").split("\n").filter(Boolean).map((line) => JSON.parse(line));
  return {
    watcher,
    firewall,
    output,
    /** The ban lines (any action about an address). */
    events: () => output().filter((line) => line.ip !== undefined),
    stderr: () => err.join(""),
    /** Polls until `check` holds, at most `polls` times. */
    async until(check: () => boolean, what: string, polls = 400): Promise<void> {
      for (let i = 0; i < polls && !check(); i++) await watcher.polled();
      assert.ok(check(), `never happened: ${what}\nstdout: ${out.join("")}\nstderr: ${err}`);
    },
    async stop(): Promise<number> {
      watcher.stop("test");
      return await watcher.done;
    },
  };
}

/** Makes a directory and its parents. */
function mkdir(path: string): void {
  mkdirSync(path, { recursive: true });
}

/** A new log with `text` in a directory of its own. */
function newLog(text: string, name = "messages"): string {
  const file = path(name);
  mkdir(join(file, ".."));
  writeFileSync(file, text);
  return file;
}

describe("options", () => {
  test("watch takes logs, every scan option and --window", () => {
    const options = parseOptions(["watch", "-n", "-t", "5", "-q", "--window", "10m", "a", "-"]);
    assert.equal(options.command, "watch");
    assert.deepEqual(options.logs, ["a", "-"]);
    assert.equal(options.threshold, 5);
    assert.equal(options.window, 600_000);
    assert.equal(parseOptions(["watch"]).window, null);
  });
  test("durations", () => {
    const cases: [string, number | null][] = [
      ["30s", 30_000],
      ["10m", 600_000],
      ["1h", 3_600_000],
      ["1h30m", 5_400_000],
      ["2d", 172_800_000],
      ["45", 45_000],
      ["0", null],
      ["0s", null],
      ["10", 10_000],
      ["1.5h", null],
      ["-1m", null],
      ["m", null],
      ["10x", null],
      ["", null],
      ["99999999999999999999d", null],
    ];
    for (const [text, ms] of cases) assert.equal(parseDuration(text), ms, text);
    assert.equal(formatDuration(600_000), "10m");
    assert.equal(formatDuration(3_600_000), "1h");
    assert.equal(formatDuration(90_000), "90s");
    assert.equal(formatDuration(5_400_000), "90m");
  });
  test("watching needs root unless it is a dry run", async () => {
    const err: string[] = [];
    const code = await main(["watch", path()], {
      uid: () => 1000,
      stderr: (text) => void err.push(text),
      run: () => Promise.reject(new Error("no firewall here")),
    });
    assert.equal(code, EXIT.noPermission);
    assert.match(err.join(""), /changing the firewall needs root; use --dry-run/);
  });
});

describe("the sliding window", () => {
  test("counts what was seen within it, forgets what left it", () => {
    const tally = newTally();
    const window = slidingWindow(tally, 60_000); // buckets of one second
    const add = (ip: string, n: number, now: number) => {
      tally.counts.set(ip, (tally.counts.get(ip) ?? 0) + n);
      window.add(ip, n, now);
    };
    add("203.0.113.1", 2, 0);
    add("203.0.113.1", 1, 30_000);
    add("203.0.113.2", 1, 59_500);
    tally.lastTries.set("203.0.113.1", 7);
    assert.deepEqual(window.expire(60_500), []);
    assert.equal(tally.counts.get("203.0.113.1"), 3, "0 s is still within a minute at 60.5 s");
    assert.deepEqual(window.expire(61_000), []);
    assert.equal(tally.counts.get("203.0.113.1"), 1, "the failures at 0 s left at 61 s");
    assert.deepEqual(window.expire(91_000), ["203.0.113.1"]);
    assert.equal(tally.counts.has("203.0.113.1"), false);
    assert.equal(tally.lastTries.has("203.0.113.1"), false, "its PJSIP tries are forgotten too");
    assert.equal(tally.counts.get("203.0.113.2"), 1);
    assert.deepEqual(window.expire(200_000), ["203.0.113.2"]);
    assert.equal(window.size(), 0);
  });
  test("memory stays bounded: 100,000 addresses seen once are all forgotten", () => {
    const tally = newTally();
    const window = slidingWindow(tally, 600_000);
    for (let i = 0; i < 100_000; i++) {
      const ip = `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`;
      tally.counts.set(ip, 1);
      window.add(ip, 1, i / 100); // all within the first bucket of ten seconds
    }
    assert.equal(window.size(), 100_000);
    assert.equal(window.expire(605_000).length, 0);
    assert.equal(window.expire(610_000).length, 100_000);
    assert.equal(tally.counts.size, 0);
    assert.equal(window.size(), 0);
  });
  test("one address failing for hours holds one bucket per sixtieth of the window", () => {
    const tally = newTally();
    const window = slidingWindow(tally, 600_000);
    for (let t = 0; t < 3 * 3_600_000; t += 250) {
      tally.counts.set("203.0.113.9", (tally.counts.get("203.0.113.9") ?? 0) + 1);
      window.add("203.0.113.9", 1, t);
      window.expire(t);
    }
    assert.ok(window.size() <= 62, `${window.size()} buckets`);
    const count = tally.counts.get("203.0.113.9")!;
    assert.ok(count >= 2400 && count <= 2440, `${count}: four a second for ten minutes`);
  });
});

describe("watching files", () => {
  test("at start it does what a cron run does over the content found", async () => {
    const log = newLog(
      lines("203.0.113.1", 300) + lines("[2001:db8::1]:5060", 250) + lines("203.0.113.2", 3) +
        lines("192.0.2.10", 999) + lines("203.0.113.3", 200),
    );
    const w = watching([log]);
    await w.watcher.polled();
    assert.deepEqual(w.events().map(({ action, ip, failures }) => [action, ip, failures]), [
      ["ignored", "192.0.2.10", 999],
      ["banned", "203.0.113.1", 300],
      ["banned", "2001:db8::1", 250],
      ["banned", "203.0.113.3", 200],
    ]);
    assert.deepEqual(w.firewall.bans(4), ["203.0.113.1/32", "203.0.113.3/32"]);
    assert.deepEqual(w.firewall.bans(6), ["2001:db8::1/128"]);
    assert.equal(w.firewall.restores().length, 2, "one batch per family");
    const start = w.output().find((line) => line.action === "watching")!;
    assert.deepEqual([start.lines, start.failures, start.addresses], [1752, 1752, 5]);
    assert.equal(start.window, null);
    assert.equal(await w.stop(), 0);
  });

  test("a log named twice at start (another path, a link) is followed once", async () => {
    const log = newLog(lines("203.0.113.1", 150));
    const link = join(log, "..", "link");
    symlinkSync(log, link);
    const w = watching([log, join(log, "..", ".", "messages"), link]);
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.1", 10));
    await w.watcher.polled();
    await w.watcher.polled();
    assert.deepEqual(w.events(), [], "160 failures, not 480: below the threshold");
    const start = w.output().find((line) => line.action === "watching")!;
    assert.deepEqual([start.lines, start.failures], [150, 150]);
    assert.equal(await w.stop(), 0);
    const stopped = w.output().find((line) => line.action === "stopped")!;
    assert.deepEqual([stopped.lines, stopped.failures], [160, 160]);
  });
  test("200,000 offenders at start are banned in one go", async () => {
    // Nothing calls a function with an argument per address (the stack would overflow).
    let text = "";
    for (let i = 0; i < 200_000; i++) {
      text += REGISTER(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
    }
    const w = watching(["-t", "1", newLog(text)]);
    await w.watcher.polled();
    assert.equal(w.stderr(), "");
    assert.equal(w.firewall.bans(4).length, 200_000);
    assert.equal(w.firewall.restores().length, 1);
    assert.equal(w.events().filter((e) => e.action === "banned").length, 200_000);
    assert.equal(await w.stop(), 0);
  });

  test("already banned addresses are not added twice", async () => {
    const log = newLog(lines("203.0.113.1", 5) + lines("203.0.113.2", 5));
    const firewall = new FakeFirewall();
    firewall.chains[4].set(CHAIN, [`-A ${CHAIN} -s 203.0.113.1/32 -j DROP`]);
    const w = watching(["-t", "5", log], {}, firewall);
    await w.watcher.polled();
    assert.deepEqual(w.events().map((e) => [e.action, e.ip]), [
      ["already-banned", "203.0.113.1"],
      ["banned", "203.0.113.2"],
    ]);
    assert.deepEqual(w.firewall.bans(4), ["203.0.113.1/32", "203.0.113.2/32"]);
    await w.stop();
  });

  test("an appended line bans at the threshold, naming the family that tipped it", async () => {
    const log = newLog(lines("203.0.113.5", 4) + BENIGN);
    const w = watching(["-t", "5", log]);
    await w.watcher.polled();
    assert.deepEqual(w.events(), []);
    appendFileSync(log, BENIGN + IAX2("203.0.113.5"));
    await w.until(() => w.events().length > 0, "a ban");
    const [ban] = w.events();
    assert.equal(ban.action, "banned");
    assert.equal(ban.ip, "203.0.113.5");
    assert.equal(ban.failures, 5);
    assert.equal(ban.family, "iax2-auth");
    assert.ok(!Number.isNaN(Date.parse(ban.time)), "a time");
    assert.deepEqual(w.firewall.bans(4), ["203.0.113.5/32"]);
    appendFileSync(log, lines("203.0.113.5", 3));
    await w.watcher.polled();
    assert.equal(w.events().length, 1, "one line per ban, not per failure after it");
    assert.equal(w.watcher.tally.counts.get("203.0.113.5"), 8);
    await w.stop();
  });

  test("a line written in two pieces is one line", async () => {
    const log = newLog(lines("203.0.113.6", 2));
    const w = watching(["-t", "3", log]);
    await w.watcher.polled();
    const line = AMI("203.0.113.6");
    const cut = line.indexOf("failed");
    appendFileSync(log, line.slice(0, cut));
    await w.watcher.polled();
    await w.watcher.polled();
    assert.equal(w.watcher.tally.lines, 2, "half a line is not read yet");
    assert.deepEqual(w.events(), []);
    appendFileSync(log, line.slice(cut));
    await w.until(() => w.events().length > 0, "a ban");
    assert.equal(w.watcher.tally.lines, 3);
    assert.deepEqual(
      w.events().map((e) => [e.ip, e.failures, e.family]),
      [["203.0.113.6", 3, "ami-auth"]],
    );
    await w.stop();
  });

  test("logrotate's rename and create: lines written to the old file after the rename count", async () => {
    const log = newLog(lines("203.0.113.7", 10));
    const w = watching(["-n", "-t", "1000", log]);
    await w.watcher.polled();
    renameSync(log, log + ".1");
    appendFileSync(log + ".1", lines("203.0.113.7", 3)); // Asterisk still writes to the old file
    writeFileSync(log, lines("203.0.113.7", 20));
    await w.watcher.polled();
    appendFileSync(log + ".1", lines("203.0.113.7", 4)); // … until logger reload
    appendFileSync(log, lines("203.0.113.7", 5));
    await w.watcher.polled();
    await w.watcher.polled();
    appendFileSync(log + ".1", lines("203.0.113.7", 1)); // a late one
    await w.watcher.polled();
    assert.equal(w.watcher.tally.counts.get("203.0.113.7"), 10 + 3 + 20 + 4 + 5 + 1);
    assert.equal(w.watcher.tally.lines, 43);
    assert.ok(w.output().some((line) => line.change === "replaced"));
    await w.stop();
  });

  test("copytruncate: the lines written just before the copy are read from the copy", async () => {
    const log = newLog(lines("203.0.113.8", 10));
    const w = watching(["-n", "-t", "1000", log]);
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.8", 7)); // perhaps not read before the copy
    copyFileSync(log, log + "-20261125");
    truncateSync(log, 0);
    appendFileSync(log, lines("203.0.113.8", 2));
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.8", 3));
    await w.watcher.polled();
    assert.equal(w.watcher.tally.counts.get("203.0.113.8"), 10 + 7 + 2 + 3);
    assert.equal(w.watcher.tally.lines, 22);
    assert.ok(w.output().some((line) => line.change === "truncated"));
    await w.stop();
  });

  test("a log rewritten in place with more than before is read from its start", async () => {
    const log = newLog(lines("203.0.113.9", 2));
    const w = watching(["-n", "-t", "1000", log]);
    await w.watcher.polled();
    writeFileSync(log, lines("203.0.113.10", 40)); // truncated and regrown, perhaps unseen
    await w.watcher.polled();
    assert.equal(w.watcher.tally.counts.get("203.0.113.9"), 2);
    assert.equal(w.watcher.tally.counts.get("203.0.113.10"), 40);
    await w.stop();
  });

  test("Asterisk's logger rotate: messages.0 is the old log, older ones are not read", async () => {
    const log = newLog(lines("203.0.113.11", 6));
    writeFileSync(log + ".0", lines("198.51.100.1", 50)); // an earlier rotation: not ours
    const w = watching(["-n", "-t", "1000", log]);
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.11", 2));
    renameSync(log + ".0", log + ".1");
    renameSync(log, log + ".0");
    writeFileSync(log, lines("203.0.113.11", 9));
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.11", 1));
    await w.watcher.polled();
    assert.equal(w.watcher.tally.counts.get("203.0.113.11"), 6 + 2 + 9 + 1);
    assert.equal(w.watcher.tally.counts.has("198.51.100.1"), false);
    await w.stop();
  });

  test("a log deleted and created again later is read again from its start", async () => {
    const log = newLog(lines("203.0.113.12", 4));
    const w = watching(["-n", "-t", "1000", log]);
    await w.watcher.polled();
    unlinkSync(log);
    await w.until(() => w.output().some((line) => line.change === "gone"), "gone");
    await w.watcher.polled();
    assert.equal(w.stderr(), "", "a log that went away is no error");
    writeFileSync(log, lines("203.0.113.12", 30)); // longer than before
    await w.until(() => w.output().some((line) => line.change === "back"), "back");
    assert.equal(w.watcher.tally.counts.get("203.0.113.12"), 34);
    await w.stop();
  });

  test("a log that cannot be read is reported once and tried again", async () => {
    const log = path();
    mkdir(join(log, ".."));
    const w = watching(["-n", "-t", "2", log]);
    for (let i = 0; i < 5; i++) await w.watcher.polled();
    assert.equal(w.stderr(), `sipcheck: cannot read "${log}": no such file; trying again\n`);
    writeFileSync(log, lines("203.0.113.13", 2));
    await w.until(() => w.events().length > 0, "a ban");
    assert.equal(w.events()[0].action, "would-ban");
    assert.ok(w.output().some((line) => line.change === "appeared"));
    unlinkSync(log);
    mkdir(log); // a directory now
    await w.until(() => w.stderr().includes("is a directory"), "a report");
    for (let i = 0; i < 3; i++) await w.watcher.polled();
    assert.equal(
      w.stderr().split("\n").length,
      3,
      "each problem once: no such file, then is a directory",
    );
    assert.equal(w.watcher.tally.counts.get("203.0.113.13"), 2);
    await w.stop();
  });

  test("a directory is reported once as one", async () => {
    const log = path();
    mkdir(log);
    const w = watching(["-n", log]);
    for (let i = 0; i < 3; i++) await w.watcher.polled();
    assert.equal(w.stderr(), `sipcheck: cannot read "${log}": is a directory; trying again\n`);
    w.watcher.reopen();
    await w.watcher.polled();
    assert.equal(w.stderr().split("\n").length, 3, "reopening reports it again, once");
    await w.stop();
  });

  test("several logs add up", async () => {
    const a = newLog(lines("203.0.113.14", 2), "messages");
    const b = join(a, "..", "security");
    writeFileSync(b, lines("203.0.113.14", 2));
    const w = watching(["-t", "5", a, b]);
    await w.watcher.polled();
    appendFileSync(b, lines("203.0.113.14", 1));
    await w.until(() => w.events().length > 0, "a ban");
    assert.deepEqual(w.events().map((e) => [e.ip, e.failures]), [["203.0.113.14", 5]]);
    await w.stop();
  });
});

describe("standard input", () => {
  test("is followed until it closes; then the watcher stops by itself", async () => {
    const text = Buffer.from(lines("203.0.113.20", 3) + lines("[2001:db8::20]:5060", 3));
    const w = watching(["-n", "-t", "3", "-"], {
      stdin: async function* () {
        for (let i = 0; i < text.length; i += 100) {
          yield text.subarray(i, i + 100); // lines cut anywhere
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      },
    });
    assert.equal(await w.watcher.done, 0);
    assert.deepEqual(w.events().map((e) => [e.action, e.ip, e.failures]), [
      ["would-ban", "203.0.113.20", 3],
      ["would-ban", "2001:db8::20", 3],
    ]);
    assert.equal(w.watcher.tally.lines, 6);
    assert.equal(w.output().at(-1)!.reason, "end of input");
  });
  test("a last line without a line feed counts", async () => {
    const w = watching(["-n", "-t", "2", "-"], {
      stdin: async function* () {
        yield Buffer.from(lines("203.0.113.21", 2).slice(0, -1));
      },
    });
    assert.equal(await w.watcher.done, 0);
    assert.equal(w.events().length, 1);
  });
  test("main runs it and returns when it closes", async () => {
    const out: string[] = [];
    const code = await main(["watch", "-n", "-q", "-t", "2", "-"], {
      stdout: (text) => void out.push(outputText(text)),
      stdin: async function* () {
        yield Buffer.from(lines("203.0.113.22", 2));
      },
    });
    assert.equal(code, 0);
    assert.match(
      out.join(""),
      /^\S+Z {2}would ban +203\.0\.113\.22 {2}2 failures \(sip-register\)\n$/,
    );
  });
});

describe("the firewall", () => {
  test("a failed batch is reported and tried again; the watcher goes on", async () => {
    const log = newLog(lines("203.0.113.30", 3) + lines("[2001:db8::30]:5060", 3));
    const firewall = new FakeFirewall();
    firewall.fail[4] = true;
    const w = watching(["-t", "3", log], {}, firewall);
    await w.watcher.polled();
    assert.match(
      w.stderr(),
      new RegExp(
        `^sipcheck: /usr/sbin/iptables-restore -w --noflush failed: iptables-restore: line 3 failed; ` +
          `1 ban to try again in ${RETRY_MS / 1000} s\n$`,
      ),
    );
    assert.deepEqual(w.events().map((e) => e.ip), ["2001:db8::30"], "IPv6 went in regardless");
    w.firewall.fail[4] = false;
    appendFileSync(log, lines("203.0.113.31", 3));
    await w.until(() => w.events().length === 3, "the retry");
    assert.deepEqual(w.firewall.bans(4).sort(), ["203.0.113.30/32", "203.0.113.31/32"]);
    const lists = w.firewall.calls.filter((call) => call.startsWith("/usr/sbin/iptables -w -S"));
    assert.equal(lists.length, 2, "the chain is read again after a failure");
    assert.equal(await w.stop(), 0);
  });

  test("a chain holding a foreign rule is refused, not banned into, until the rule is gone", async () => {
    const log = newLog(lines("203.0.113.35", 3));
    const firewall = new FakeFirewall();
    firewall.chains[4].set(CHAIN, [`-A ${CHAIN} -s 10.0.0.0/8 -j ACCEPT`]);
    const w = watching(["-t", "3", log], {}, firewall);
    await w.watcher.polled();
    assert.equal(
      w.stderr(),
      "sipcheck: iptables: the sipcheck chain holds a rule sipcheck did not write " +
        '("-A sipcheck -s 10.0.0.0/8 -j ACCEPT"); sipcheck bans only in a chain of its own: ' +
        "delete it (iptables -D sipcheck N), or rename that chain (iptables -E sipcheck " +
        `NEWNAME); 1 ban to try again in ${RETRY_MS / 1000} s\n`,
    );
    assert.deepEqual(w.events(), []);
    assert.deepEqual(w.firewall.restores(), [], "nothing was sent to iptables-restore");
    w.firewall.chains[4].set(CHAIN, []);
    appendFileSync(log, lines("203.0.113.36", 3));
    await w.until(() => w.events().length === 2, "the retry");
    assert.deepEqual(w.firewall.bans(4).sort(), ["203.0.113.35/32", "203.0.113.36/32"]);
    assert.equal(await w.stop(), 0);
  });

  test("bans that fall due while a batch is in flight go in one restore call", async () => {
    const log = newLog(lines("203.0.113.40", 2));
    const w = watching(["-t", "3", log]);
    await w.watcher.polled();
    let release = () => {};
    w.firewall.hold = new Promise((resolve) => release = resolve);
    const started = new Promise<void>((resolve) => w.firewall.onRestore = resolve);
    appendFileSync(log, lines("203.0.113.40", 1));
    await started; // the first batch is in flight, and the watcher reads nothing meanwhile
    assert.equal(w.firewall.restores().length, 1);
    appendFileSync(log, ["41", "42", "43", "44"].map((n) => lines(`203.0.113.${n}`, 3)).join(""));
    w.firewall.hold = null;
    release();
    await w.until(() => w.events().length === 5, "five bans");
    const restores = w.firewall.restores();
    assert.equal(restores.length, 2);
    assert.equal(restores[1].match(/-j DROP/g)?.length, 4, restores[1]);
    await w.stop();
  });

  test("reopen reads the chain again: an address unbanned by hand is banned again", async () => {
    const log = newLog(lines("203.0.113.50", 3));
    const w = watching(["-t", "3", log]);
    await w.until(() => w.events().length === 1, "a ban");
    w.firewall.chains[4].set(CHAIN, []); // iptables -F sipcheck
    appendFileSync(log, lines("203.0.113.50", 1));
    await w.watcher.polled();
    assert.equal(w.events().length, 1, "the watcher does not know yet");
    w.watcher.reopen();
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.50", 1));
    await w.until(() => w.events().length === 2, "a second ban");
    assert.deepEqual(w.firewall.bans(4), ["203.0.113.50/32"]);
    await w.stop();
  });

  test("the chain is read before every batch: a foreign rule added since refuses the batch, a deleted jump is put back", async () => {
    const log = newLog(lines("203.0.113.80", 3));
    const w = watching(["-t", "3", log]);
    await w.until(() => w.events().length === 1, "a first ban");
    const input = w.firewall.chains[4].get("INPUT")!;
    assert.deepEqual([...input].sort(), [...jumpRules()].sort());
    // iptables -I sipcheck 1 -s 198.51.100.0/24 -j ACCEPT; iptables -D INPUT <the udp jump>
    w.firewall.chains[4].get(CHAIN)!.unshift(`-A ${CHAIN} -s 198.51.100.0/24 -j ACCEPT`);
    input.splice(input.findIndex((rule) => rule.includes("-p udp")), 1);
    appendFileSync(log, lines("198.51.100.7", 3));
    await w.until(() => w.stderr() !== "", "a refusal");
    assert.match(
      w.stderr(),
      /^sipcheck: iptables: the sipcheck chain holds a rule sipcheck did not write \("-A sipcheck -s 198\.51\.100\.0\/24 -j ACCEPT"\).*; 1 ban to try again in 1 s\n$/,
    );
    assert.equal(w.events().length, 1, "not reported banned behind the ACCEPT");
    assert.equal(w.firewall.restores().length, 1, "nothing added behind the ACCEPT");
    w.firewall.chains[4].get(CHAIN)!.shift(); // the ACCEPT is deleted
    await w.until(() => w.events().length === 2, "the retry");
    assert.deepEqual(w.events().map((e) => [e.action, e.ip]), [
      ["banned", "203.0.113.80"],
      ["banned", "198.51.100.7"],
    ]);
    assert.deepEqual(w.firewall.bans(4), ["203.0.113.80/32", "198.51.100.7/32"]);
    assert.deepEqual([...input].sort(), [...jumpRules()].sort(), "the udp jump is back");
    await w.stop();
  });

  test("one iptables -S per batch and family", async () => {
    const log = newLog("");
    const w = watching(["-t", "2", log]);
    await w.watcher.polled();
    for (const n of [1, 2, 3]) {
      appendFileSync(log, lines(`203.0.113.9${n}`, 2));
      await w.until(() => w.events().length === n, `ban ${n}`);
    }
    appendFileSync(log, lines("[2001:db8::90]:5060", 2));
    await w.until(() => w.events().length === 4, "an IPv6 ban");
    const lists = (binary: string) => w.firewall.calls.filter((c) => c === `${binary} -w -S`);
    assert.equal(lists("/usr/sbin/iptables").length, 3);
    assert.equal(lists("/usr/sbin/ip6tables").length, 1);
    assert.equal(w.firewall.restores().length, 4);
    await w.stop();
  });

  test("bans lost since (a whole-table iptables-restore) are put back by the next batch", async () => {
    const log = newLog(
      lines("203.0.113.100", 3) + lines("203.0.113.101", 4) + lines("203.0.113.102", 1),
    );
    const w = watching(["-t", "3", "--window", "1h", log]);
    await w.until(() => w.events().length === 2, "two bans");
    // iptables-restore of a table saved before sipcheck ran: no chain, no jumps.
    w.firewall.chains[4] = new Map([["INPUT", []]]);
    appendFileSync(log, lines("203.0.113.102", 2));
    await w.until(() => w.events().length === 5, "the bans again");
    assert.deepEqual(w.events().slice(2).map((e) => [e.action, e.ip, e.failures, e.family]), [
      ["banned", "203.0.113.101", 4, "sip-register"],
      ["banned", "203.0.113.102", 3, "sip-register"],
      ["banned", "203.0.113.100", 3, "sip-register"],
    ]);
    assert.deepEqual(w.firewall.bans(4).sort(), [
      "203.0.113.100/32",
      "203.0.113.101/32",
      "203.0.113.102/32",
    ]);
    assert.deepEqual(w.firewall.chains[4].get("INPUT")!.sort(), [...jumpRules()].sort());
    assert.equal(w.firewall.restores().length, 2, "all three in one batch");
    const last = await w.stop();
    assert.equal(last, 0);
    assert.equal(w.output().at(-1)!.bans, 5);
  });

  test("stopping reads and bans what was written before, then closes", async () => {
    const log = newLog(lines("203.0.113.60", 2));
    const w = watching(["-t", "3", log]);
    await w.watcher.polled();
    appendFileSync(log, lines("203.0.113.60", 1));
    w.watcher.stop("SIGTERM");
    assert.equal(await w.watcher.done, 0);
    assert.deepEqual(w.events().map((e) => [e.action, e.ip]), [["banned", "203.0.113.60"]]);
    const last = w.output().at(-1)!;
    assert.deepEqual([last.action, last.reason, last.bans], ["stopped", "SIGTERM", 1]);
    await w.watcher.polled(); // settles at once after the end
  });
});

describe("with --window", () => {
  test("the window is in the start line and in every ban line", async () => {
    const log = newLog(lines("203.0.113.70", 3));
    const out: string[] = [];
    const watcher = startWatcher(parseOptions(["watch", "-n", "-t", "3", "--window", "10m", log]), {
      stdout: (text) => void out.push(outputText(text)),
      stderr: () => {},
      run: () => Promise.reject(new Error("a dry run runs nothing")),
      uid: () => 0,
      lockPath: "",
      hostAddresses: () => [],
      stdin: () => (async function* () {})(),
    });
    await watcher.polled();
    watcher.stop("test");
    await watcher.done;
    const text = out.join("");
    assert.match(text, /would ban +203\.0\.113\.70 {2}3 failures in 10m \(sip-register\)\n/);
    assert.match(text, /watching .* \(threshold 3, window 10m, dry run\)/);
    assert.ok(watcher.window !== null);
  });
  test("JSON start line says the window in seconds", async () => {
    const w = watching(["-n", "--window", "1h", newLog("")]);
    await w.watcher.polled();
    assert.equal(w.output()[0].window, 3600);
    await w.stop();
  });
});
