/**
 * `main` in-process with fake edges: options, decisions, reports, exit codes, the lock, and the
 * firewall flow against a small fake of iptables (the real one is in firewall.test.ts).
 */
import assert from "node:assert/strict";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  rmdirSync,
  statSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { basename, join } from "node:path";
import process from "node:process";
import { describe, test } from "node:test";
import {
  CHAIN,
  type Cidr,
  decide,
  defaultLog,
  type Deps,
  EXIT,
  formatReport,
  jsonReport,
  main,
  newTally,
  normaliseAddress,
  parseCidr,
  parseOptions,
  resolveLog,
  runProgram,
  type RunResult,
  scanString,
  SipcheckError,
  THRESHOLD,
} from "../sipcheck.ts";
import { FakeFirewall, fixture, joinedText, outputText, REGISTER, tempDir } from "./helpers.ts";

/** Deps for main: captured output, a fake firewall, root, a lock file in a temp dir. */
function harness(overrides: Partial<Deps> = {}) {
  const dir = tempDir();
  const out: string[] = [];
  const err: string[] = [];
  const firewall = new FakeFirewall();
  const deps: Partial<Deps> = {
    stdout: (text) => void out.push(outputText(text)),
    stderr: (text) => void err.push(text),
    run: firewall.run,
    uid: () => 0,
    lockPath: join(dir.path, "sipcheck.lock"),
    hostAddresses: () => ["192.0.2.10", "fe80::1"],
    ...overrides,
  };
  return {
    deps,
    firewall,
    dir: dir.path,
    stdout: () => out.join(""),
    stderr: () => err.join(""),
    done: dir.remove,
  };
}

/** Writes a log with `n` failures for each address. */
function writeLog(dir: string, failures: Record<string, number>): string {
  const path = join(dir, "messages");
  writeFileSync(
    path,
    Object.entries(failures).map(([address, n]) => REGISTER(address).repeat(n)).join(""),
  );
  return path;
}

describe("parseOptions", () => {
  test("defaults", () => {
    const options = parseOptions([]);
    assert.equal(options.command, "scan");
    assert.equal(options.threshold, THRESHOLD);
    assert.deepEqual(options.logs, []);
    assert.equal(options.dryRun, false);
  });
  test("commands, logs and every option", () => {
    assert.equal(parseOptions(["clear"]).command, "clear");
    assert.equal(parseOptions(["clear", "-n"]).dryRun, true);
    assert.equal(parseOptions(["--dry-run", "-q", "clear"]).dryRun, true);
    assert.equal(parseOptions(["--json", "list"]).command, "list");
    assert.equal(parseOptions(["list", "-q"]).quiet, true);
    const options = parseOptions([
      "-n",
      "-t",
      "5",
      "-i",
      "203.0.113.0/24",
      "--ignore=::1",
      "-q",
      "a",
      "-",
    ]);
    assert.equal(options.dryRun, true);
    assert.equal(options.threshold, 5);
    assert.equal(options.ignore.length, 2);
    assert.equal(options.quiet, true);
    assert.deepEqual(options.logs, ["a", "-"]);
  });
  const bad: [string[], RegExp][] = [
    [["-t", "0"], /positive whole number, not "0"/],
    [
      ["-t", "-1"],
      /^Option '-t' argument is ambiguous\. To specify an option argument starting with a dash use '--threshold=-XYZ' or '-t-XYZ'\.$/,
    ],
    [["", "messages"], /^a log name is empty \(""\): name a file, or "-"$/],
    [["watch", ""], /^a log name is empty/],
    [["--threshold=-1"], /positive whole number, not "-1"/],
    [["-t", "abc"], /not "abc"/],
    [["-t", "1.5"], /not "1.5"/],
    [["-t", "99999999999999999999"], /positive whole number/],
    [["-t"], /argument missing/],
    [["-i", "203.0.113.0/33"], /--ignore takes an IP address or CIDR block, not "203.0.113.0\/33"/],
    [["-i", "pbx.example"], /not "pbx.example"/],
    [["--bogus"], /Unknown option '--bogus'/],
    [["clear", "messages"], /"clear" takes no log names/],
    [["watch", "--window", "0"], /--window takes a duration such as 30s, 10m or 1h, not "0"/],
    [["watch", "--window", "soon"], /not "soon"/],
    [["--window", "10m"], /--window is only for "watch"/],
    [["list", "--window", "10m"], /--window is only for "watch"/],
    [["list", "-t", "5"], /^--threshold \(-t\) is only for a scan and "watch", not for "list"$/],
    [["list", "-t", "abc"], /^--threshold \(-t\) is only for a scan and "watch", not for "list"$/],
    [
      ["clear", "--threshold=5"],
      /^--threshold \(-t\) is only for a scan and "watch", not for "clear"$/,
    ],
    [
      ["list", "-i", "203.0.113.1"],
      /^--ignore \(-i\) is only for a scan and "watch", not for "list"$/,
    ],
    [["clear", "-i", "::1"], /^--ignore \(-i\) is only for a scan and "watch", not for "clear"$/],
    [["clear", "--json"], /^--json is only for a scan, "watch" and "list", not for "clear"$/],
    [["list", "-n"], /^--dry-run \(-n\) is only for a scan, "watch" and "clear", not for "list"$/],
    [["--window", "1m", "-n"], /^--window is only for "watch", not for a scan$/],
  ];
  for (const [argv, message] of bad) {
    test(`rejects ${argv.join(" ")}`, () => {
      assert.throws(() => parseOptions(argv), (error: unknown) => {
        assert.ok(error instanceof SipcheckError);
        assert.equal(error.code, EXIT.usage);
        assert.match(error.message, message);
        assert.ok(!error.message.includes("\n"), "one line");
        return true;
      });
    });
  }
});

describe("where logs are read", () => {
  const exists = (present: string[]) => (path: string) => present.includes(path);
  test("default: messages, or messages.log when only that exists", () => {
    assert.equal(defaultLog(exists([])), "/var/log/asterisk/messages");
    assert.equal(defaultLog(exists(["/var/log/asterisk/messages"])), "/var/log/asterisk/messages");
    assert.equal(
      defaultLog(exists(["/var/log/asterisk/messages.log"])),
      "/var/log/asterisk/messages.log",
    );
    assert.equal(
      defaultLog(exists(["/var/log/asterisk/messages", "/var/log/asterisk/messages.log"])),
      "/var/log/asterisk/messages",
    );
  });
  test("a bare name is looked up in the log directory unless it exists here", () => {
    assert.equal(resolveLog("messages", exists([])), "/var/log/asterisk/messages");
    assert.equal(resolveLog("messages", exists(["messages"])), "messages");
    assert.equal(resolveLog("./messages", exists([])), "./messages");
    assert.equal(resolveLog("/tmp/x", exists([])), "/tmp/x");
    assert.equal(resolveLog("-", exists([])), "-");
    // With the real file system: a broken link here is read (and reported) as itself.
    const dir = tempDir();
    const cwd = process.cwd();
    try {
      symlinkSync(join(dir.path, "gone"), join(dir.path, "broken"));
      process.chdir(dir.path);
      assert.equal(resolveLog("broken"), "broken");
      assert.equal(resolveLog("not-here"), "/var/log/asterisk/not-here");
    } finally {
      process.chdir(cwd);
      dir.remove();
    }
  });
});

describe("decide", () => {
  const counts = new Map([["203.0.113.1", 500], ["203.0.113.2", 200], ["203.0.113.3", 199], [
    "127.0.0.1",
    900,
  ], ["2001:db8::5", 300]]);
  const ignore = [parseCidr("127.0.0.0/8")!] as Cidr[];
  test("at or over the threshold, highest first, each with its action", () => {
    const decisions = decide(counts, {
      threshold: 200,
      ignore,
      banned: new Set(["2001:db8::5"]),
      dryRun: false,
    });
    assert.deepEqual(decisions, [
      { ip: "127.0.0.1", failures: 900, action: "ignored" },
      { ip: "203.0.113.1", failures: 500, action: "banned" },
      { ip: "2001:db8::5", failures: 300, action: "already-banned" },
      { ip: "203.0.113.2", failures: 200, action: "banned" },
    ]);
  });
  test("a dry run would ban", () => {
    const decisions = decide(counts, {
      threshold: 300,
      ignore: [],
      banned: new Set(),
      dryRun: true,
    });
    assert.deepEqual(decisions.map((d) => d.action), ["would-ban", "would-ban", "would-ban"]);
  });
});

describe("reports", () => {
  const tally = scanString(
    REGISTER("203.0.113.1").repeat(3) + REGISTER("203.0.113.2") +
      REGISTER("[2001:db8::1]:5060").repeat(3),
  );
  const summary = { files: 1, threshold: 3, dryRun: true, errors: [] };
  const decisions = decide(tally.counts, {
    threshold: 3,
    ignore: [],
    banned: new Set(),
    dryRun: true,
  });
  test("human: one line per address at the threshold, then a summary", () => {
    const text = formatReport(decisions, tally, summary, false);
    assert.equal(
      text,
      "would ban       203.0.113.1  3 failures\n" +
        "would ban       2001:db8::1  3 failures\n" +
        "sipcheck: 1 file, 7 lines, 7 failures from 3 addresses (threshold 3, dry run): 2 would ban\n",
    );
  });
  test("quiet: only the bans", () => {
    assert.equal(formatReport([], tally, summary, true), "");
    assert.equal(formatReport(decisions, tally, summary, true).split("\n").length, 3);
  });
  test("JSON: totals and every address, highest first", () => {
    const text = joinedText(jsonReport(decisions, tally, summary));
    const report = JSON.parse(text);
    for (const entry of report.addresses) {
      assert.ok(text.includes(`\n${JSON.stringify(entry)}`), "one address per line, as stringify");
    }
    assert.equal(report.lines, 7);
    assert.equal(report.failures, 7);
    assert.equal(report.threshold, 3);
    assert.equal(report.dryRun, true);
    assert.deepEqual(report.addresses, [
      { ip: "203.0.113.1", failures: 3, action: "would-ban" },
      { ip: "2001:db8::1", failures: 3, action: "would-ban" },
      { ip: "203.0.113.2", failures: 1, action: "below-threshold" },
    ]);
  });
  test("JSON of many addresses comes in pieces that join into one object", () => {
    const many = newTally();
    for (let i = 0; i < 5000; i++) many.counts.set(`10.0.${i >> 8}.${i & 255}`, 1 + (i % 7));
    const decided = decide(many.counts, {
      threshold: 6,
      ignore: [parseCidr("10.0.0.0/24")!],
      banned: new Set(["10.0.1.1"]),
      dryRun: false,
    });
    const pieces = Array.from(jsonReport(decided, many, summary), outputText);
    assert.ok(pieces.length > 1, `${pieces.length} pieces`);
    const report = JSON.parse(joinedText(pieces));
    const actions = new Map(decided.map((d) => [d.ip, d.action]));
    assert.equal(report.addresses.length, 5000);
    for (const { ip, failures, action } of report.addresses) {
      assert.equal(failures, many.counts.get(ip), ip);
      assert.equal(action, actions.get(ip) ?? "below-threshold", ip);
    }
    assert.ok(decided.some((d) => d.action === "ignored"));
    assert.ok(decided.some((d) => d.action === "already-banned"));
    const shuffled = [...decided.slice(7), ...decided.slice(0, 7).reverse()];
    assert.equal(joinedText(jsonReport(shuffled, many, summary)), joinedText(pieces), "any order");
  });
  test("JSON writes every address as JSON.stringify does, whatever its form and count", () => {
    const texts = [
      "0.0.0.0",
      "255.255.255.255",
      "10.0.0.1",
      "1.22.133.4",
      "::",
      "::1",
      "1::",
      "2001:db8::",
      "2001:db8::1:0:0:1",
      "1:0:2:0:3:0:4:0",
      "fe80::abcd:12",
      "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
      "x",
      'a "quoted" \\ text',
      "\u00fcn\u00ef\u2028",
      // Other text longer than a piece, and longer in UTF-8 than in characters.
      "z".repeat(70_000),
      "\u2028".repeat(300),
    ];
    let seed = 11;
    const next = (n: number) => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n;
    for (let i = 0; i < 3000; i++) {
      if (i % 2 === 0) texts.push([0, 0, 0, 0].map(() => next(256)).join("."));
      else {
        // Runs of zero groups of every length, at every place.
        const groups = Array.from(
          { length: 8 },
          () => next(3) === 0 ? 0 : next(1 << (4 * next(5))),
        );
        texts.push(normaliseAddress(groups.map((g) => g.toString(16)).join(":"), "bare")!);
      }
    }
    const values = [1, 2, 7, 10, 98, 99, 100, 0, 1.5, -3, 2 ** 53 - 1, 2 ** 53, 1e21];
    const many = newTally();
    texts.forEach((text, i) => many.counts.set(text, values[i % values.length]));
    for (const threshold of [99, Infinity]) {
      const decided = decide(many.counts, {
        threshold,
        ignore: [],
        banned: new Set(),
        dryRun: true,
      });
      const actions = new Map(decided.map((d) => [d.ip, d.action]));
      const expected = [...many.counts.byValue()].map(([ip, failures]) =>
        "\n" + JSON.stringify({ ip, failures, action: actions.get(ip) ?? "below-threshold" })
      ).join(",") + "\n]}\n";
      const text = joinedText(jsonReport(decided, many, summary));
      const start = text.indexOf(',"addresses":[') + ',"addresses":['.length;
      assert.equal(text.slice(start), expected, `threshold ${threshold}`);
    }
  });
  test("JSON: an object that ends a piece is written whole, counted in UTF-8 bytes", () => {
    // A filler text of every length near a piece's size puts the next object at every place
    // near the piece's end; that object is three times longer in bytes than in characters.
    const wide = "\u2028".repeat(300);
    for (let filler = 64_000; filler <= 65_500; filler += 100) {
      const tally = newTally();
      tally.counts.set("x".repeat(filler), 2);
      tally.counts.set(wide, 1);
      const report = JSON.parse(joinedText(jsonReport([], tally, summary)));
      assert.deepEqual(report.addresses.map((a: { ip: string }) => a.ip.length), [filler, 300]);
      assert.equal(report.addresses[1].ip, wide, `after ${filler} characters`);
    }
  });
  test("JSON with no failures is still one object", () => {
    const report = JSON.parse(joinedText(jsonReport([], newTally(), summary)));
    assert.deepEqual(report.addresses, []);
  });
});

describe("main", () => {
  test("--help and --version print and exit 0", async () => {
    const h = harness();
    assert.equal(await main(["--help"], h.deps), 0);
    assert.match(h.stdout(), /^sipcheck \d+\.\d+\.\d+: ban addresses/);
    assert.match(h.stdout(), /Exit codes: 0 done, 64 usage error/);
    const v = harness();
    assert.equal(await main(["-V"], v.deps), 0);
    assert.match(v.stdout(), /^sipcheck \d+\.\d+\.\d+\n$/);
    h.done();
    v.done();
  });
  test("usage errors exit 64 with one line and touch nothing", async () => {
    const h = harness();
    assert.equal(await main(["-t", "0"], h.deps), EXIT.usage);
    assert.equal(h.stderr(), 'sipcheck: --threshold must be a positive whole number, not "0"\n');
    assert.deepEqual(h.firewall.calls, []);
    h.done();
  });
  test("changing the firewall needs root: 77, with a pointer to --dry-run", async () => {
    const h = harness({ uid: () => 1000 });
    assert.equal(
      await main([writeLog(tempDir().path, { "203.0.113.1": 300 })], h.deps),
      EXIT.noPermission,
    );
    assert.match(h.stderr(), /^sipcheck: changing the firewall needs root; use --dry-run \(-n\)/);
    assert.equal(await main(["clear"], h.deps), EXIT.noPermission);
    assert.equal(await main(["list"], h.deps), EXIT.noPermission);
    assert.deepEqual(h.firewall.calls, []);
    h.done();
  });
  test("a dry run needs neither root nor the firewall", async () => {
    const h = harness({ uid: () => 1000 });
    const log = writeLog(h.dir, { "203.0.113.1": 300, "203.0.113.2": 5 });
    assert.equal(await main(["-n", log], h.deps), 0);
    assert.match(h.stdout(), /^would ban +203\.0\.113\.1 +300 failures\n/);
    assert.deepEqual(h.firewall.calls, []);
    h.done();
  });
  test("bans what is new, in one batch per family; a rerun adds nothing", async () => {
    const h = harness();
    const log = writeLog(h.dir, {
      "203.0.113.1": 300,
      "[2001:db8::1]:5060": 250,
      "203.0.113.2": 3,
      "192.0.2.10": 999,
    });
    assert.equal(await main([log], h.deps), 0);
    assert.deepEqual(h.firewall.bans(4), ["203.0.113.1/32"]);
    assert.deepEqual(h.firewall.bans(6), ["2001:db8::1/128"]);
    assert.equal(h.firewall.calls.filter((c) => c.includes("-restore")).length, 2);
    assert.match(h.stdout(), /ignored +192\.0\.2\.10 +999 failures/, "the host's own address");
    assert.match(h.stdout(), /banned +203\.0\.113\.1/);
    assert.ok(!existsSync(h.deps.lockPath!), "lock released");
    h.firewall.calls = [];
    assert.equal(await main([log, "--json"], h.deps), 0);
    assert.equal(h.firewall.calls.filter((c) => c.includes("-restore")).length, 0);
    const report = JSON.parse(h.stdout().slice(h.stdout().indexOf("{")));
    assert.deepEqual(
      report.addresses.map((a: { action: string }) => a.action),
      ["ignored", "already-banned", "already-banned", "below-threshold"],
    );
    h.done();
  });
  for (
    const [failing, other, binary, banned] of [
      [6, 4, "ip6tables-restore", /would ban +203\.0\.113\.1/],
      [4, 6, "iptables-restore", /would ban +2001:db8::1/],
    ] as const
  ) {
    test(`a failed IPv${failing} batch is undone in the other family: 69, nothing banned`, async () => {
      const h = harness();
      h.firewall.fail[failing] = true;
      const log = writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 });
      assert.equal(await main([log], h.deps), EXIT.unavailable);
      assert.deepEqual(h.firewall.bans(other), []);
      assert.equal(
        h.firewall.chains[other].has(CHAIN),
        false,
        "the chain it created is gone again",
      );
      assert.deepEqual(h.firewall.chains[other].get("INPUT"), []);
      assert.match(
        h.stderr(),
        new RegExp(
          `(?:^|[/ ])${binary} -w --noflush failed: iptables-restore: line 3 failed; ` +
            "nothing was banned\n$",
        ),
      );
      assert.match(h.stdout(), banned);
      h.done();
    });
  }
  test("a log named twice (another path, a link) is read once", async () => {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 150 });
    symlinkSync(log, join(h.dir, "link.log"));
    const again = join(h.dir, ".", "..", basename(h.dir), basename(log));
    assert.equal(await main(["--json", log, again, join(h.dir, "link.log")], h.deps), 0);
    const report = JSON.parse(h.stdout());
    assert.equal(report.files, 1);
    assert.deepEqual(report.addresses, [
      { ip: "203.0.113.1", failures: 150, action: "below-threshold" },
    ]);
    assert.deepEqual(h.firewall.bans(4), [], "150 is below the threshold, not 450 over it");
    h.done();
  });
  test("a batch that cannot be undone is said so, and its bans are reported as banned", async () => {
    const h = harness();
    h.firewall.fail[6] = true;
    let restores4 = 0;
    const undoFails = harness({
      lockPath: h.deps.lockPath,
      run: async (binary, args, input) => {
        if (binary.endsWith("/iptables-restore") && restores4++ === 1) {
          return { code: 1, stdout: "", stderr: "iptables-restore: line 2 failed\n" };
        }
        return await h.firewall.run(binary, args, input);
      },
    });
    const log = writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 });
    assert.equal(await main([log], undoFails.deps), EXIT.unavailable);
    assert.deepEqual(h.firewall.bans(4), ["203.0.113.1/32"], "the undo failed: the ban stays");
    assert.deepEqual(h.firewall.bans(6), []);
    assert.match(
      undoFails.stderr(),
      /ip6tables-restore -w --noflush failed: iptables-restore: line 3 failed; the iptables batch went in and could not be taken out again \(.*iptables-restore -w --noflush failed: iptables-restore: line 2 failed\): its 1 ban stay\n$/,
    );
    assert.match(undoFails.stdout(), /^banned +203\.0\.113\.1 /m);
    assert.match(undoFails.stdout(), /^would ban +2001:db8::1 /m);
    h.done();
    undoFails.done();
  });
  test("the IPv4 and IPv6 batches run at the same time", async () => {
    const h = harness();
    let release = () => {};
    h.firewall.hold = new Promise((resolve) => release = resolve);
    let started = 0;
    let together = false;
    let gaveUp = false;
    h.firewall.onRestore = () => {
      if (++started === 2 && !gaveUp) {
        together = true;
        release();
      }
    };
    // One after the other, the second would never start while the first waits: do not hang.
    const fallback = setTimeout(() => {
      gaveUp = true;
      release();
    }, 2000);
    const log = writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 });
    assert.equal(await main([log], h.deps), 0);
    clearTimeout(fallback);
    assert.ok(together, "the second batch started while the first was still running");
    assert.deepEqual(h.firewall.bans(4), ["203.0.113.1/32"]);
    assert.deepEqual(h.firewall.bans(6), ["2001:db8::1/128"]);
    h.done();
  });
  test("a missing iptables is 69 with an install hint", async () => {
    const h = harness();
    h.firewall.missing = true;
    assert.equal(await main([writeLog(h.dir, { "203.0.113.1": 300 })], h.deps), EXIT.unavailable);
    assert.match(
      h.stderr(),
      /\/usr\/sbin\/iptables not found: install iptables \(apt-get install iptables\)/,
    );
    h.done();
  });
  test("list and clear on a host without ip6tables: IPv4 alone; without either, 69", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300 })], h.deps);
    const noIp6tables = async (binary: string, args: readonly string[], input?: string) => {
      if (binary.includes("ip6tables")) {
        throw Object.assign(new Error("spawn ENOENT"), { code: "ENOENT" });
      }
      return await h.firewall.run(binary, args, input);
    };
    const list = harness({ run: noIp6tables });
    assert.equal(await main(["list"], list.deps), 0, list.stderr());
    assert.equal(list.stdout(), "203.0.113.1\n");
    const clear = harness({ run: noIp6tables });
    assert.equal(await main(["clear"], clear.deps), 0, clear.stderr());
    assert.equal(
      clear.stdout(),
      "sipcheck: removed the sipcheck chain and its jump rules from iptables (1 ban)\n",
    );
    assert.equal(h.firewall.chains[4].has(CHAIN), false);
    h.firewall.missing = true;
    const neither = harness({ run: h.firewall.run });
    assert.equal(await main(["list"], neither.deps), EXIT.unavailable);
    assert.match(neither.stderr(), /^sipcheck: \/usr\/sbin\/iptables not found: install iptables/);
    for (const x of [h, list, clear, neither]) x.done();
  });
  test("an unreadable log is 66; the others are still scanned and acted on", async () => {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 300 });
    assert.equal(await main([join(h.dir, "nope"), h.dir, log], h.deps), EXIT.noInput);
    assert.equal(
      h.stderr(),
      `sipcheck: cannot read "${join(h.dir, "nope")}": no such file\n` +
        `sipcheck: cannot read "${h.dir}": is a directory\n`,
    );
    assert.deepEqual(h.firewall.bans(4), ["203.0.113.1/32"]);
    h.done();
  });
  test("another run holding the lock: 75; a stale lock is taken over", async () => {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 300 });
    writeFileSync(h.deps.lockPath!, `${process.ppid} scan\n`);
    const alive = harness({
      lockPath: h.deps.lockPath,
      run: async (binary, args, input) =>
        binary.endsWith("/kill")
          ? { code: 0, stdout: "", stderr: "" }
          : await h.firewall.run(binary, args, input),
    });
    assert.equal(await main([log], alive.deps), EXIT.tempFail);
    assert.match(
      alive.stderr(),
      new RegExp(`another sipcheck run holds the lock \\(pid ${process.ppid}`),
    );
    writeFileSync(h.deps.lockPath!, `${process.ppid} watch\n`);
    const watcher = harness({ lockPath: h.deps.lockPath, run: alive.deps.run });
    assert.equal(await main(["clear"], watcher.deps), EXIT.tempFail);
    assert.match(watcher.stderr(), /a sipcheck watcher is active/);
    assert.equal(readFileSync(h.deps.lockPath!, "utf8"), `${process.ppid} watch\n`, "left alone");
    writeFileSync(h.deps.lockPath!, "999999999 scan\n");
    assert.equal(await main([log], h.deps), 0, "the fake kill says the pid is gone");
    assert.ok(!existsSync(h.deps.lockPath!));
    h.done();
  });
  /**
   * A run that finds a stale lock while another run races it: its `kill -0` goes to `kill` (given
   * the lock's path), which plays the other run; the other calls go to a fake firewall. The other
   * run ends up holding the lock, and this one must say 75, ban nothing and leave that lock alone.
   */
  async function raceForStaleLock(kill: (lock: string) => RunResult, message: RegExp) {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 300 });
    const lock = h.deps.lockPath!;
    writeFileSync(lock, "999999999 scan\n");
    const racing = harness({
      lockPath: lock,
      run: async (binary, args, input) =>
        binary.endsWith("/kill") ? kill(lock) : await h.firewall.run(binary, args, input),
    });
    assert.equal(await main([log], racing.deps), EXIT.tempFail);
    assert.match(racing.stderr(), message);
    assert.equal(readFileSync(lock, "utf8"), `${process.ppid} scan\n`, "the other run's lock");
    assert.deepEqual(h.firewall.bans(4), []);
    unlinkSync(lock);
    h.done();
    racing.done();
  }
  /** The other run's lock, put in place of `lock`. */
  function otherRunTakes(lock: string): void {
    unlinkSync(lock);
    writeFileSync(lock, `${process.ppid} scan\n`);
  }
  const GONE = { code: 1, stdout: "", stderr: "" };
  const ALIVE = { code: 0, stdout: "", stderr: "" };
  test("a stale lock taken over by another run meanwhile is left to it: 75", async () => {
    let checks = 0;
    await raceForStaleLock((lock) => {
      if (checks++ > 0) return ALIVE; // the other run, asked about next
      otherRunTakes(lock); // while this run checks the stale holder, the other takes the lock
      return GONE;
    }, new RegExp(`holds the lock \\(pid ${process.ppid}`));
  });
  test("two runs that take over a stale lock at once: the one whose lock was removed says 75", async () => {
    await raceForStaleLock((lock) => {
      // The other run removes the lock this one is about to make, and makes its own.
      setTimeout(() => otherRunTakes(lock), 20);
      return GONE;
    }, /took over the stale lock .* at the same time; try again later/);
  });
  test("an empty lock is one being written (75) unless it is old", async () => {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 300 });
    const lock = h.deps.lockPath!;
    writeFileSync(lock, "");
    assert.equal(await main([log], h.deps), EXIT.tempFail);
    assert.match(h.stderr(), /another sipcheck run is taking the lock/);
    assert.equal(readFileSync(lock, "utf8"), "", "left alone");
    const minuteAgo = new Date(Date.now() - 60_000);
    utimesSync(lock, minuteAgo, minuteAgo);
    const later = harness({ lockPath: lock, run: h.firewall.run });
    assert.equal(await main([log], later.deps), 0, later.stderr());
    assert.deepEqual(h.firewall.bans(4), ["203.0.113.1/32"]);
    assert.ok(!existsSync(lock));
    h.done();
    later.done();
  });
  test("a lock path that is not a file (a directory, a link): 1, one line, left alone", async () => {
    const h = harness();
    const log = writeLog(h.dir, { "203.0.113.1": 300 });
    mkdirSync(h.deps.lockPath!);
    assert.equal(await main([log], h.deps), EXIT.unexpected);
    assert.equal(
      h.stderr(),
      `sipcheck: the lock path ${h.deps.lockPath} is not a file; remove what is there, ` +
        "sipcheck will not\n",
    );
    assert.ok(statSync(h.deps.lockPath!).isDirectory(), "the directory is still there");
    assert.deepEqual(h.firewall.bans(4), [], "nothing banned without the lock");
    rmdirSync(h.deps.lockPath!);
    symlinkSync(log, h.deps.lockPath!);
    const linked = harness({ lockPath: h.deps.lockPath });
    assert.equal(await main([log], linked.deps), EXIT.unexpected);
    assert.match(linked.stderr(), /is not a file/);
    assert.ok(lstatSync(h.deps.lockPath!).isSymbolicLink(), "the link is still there");
    unlinkSync(h.deps.lockPath!);
    h.done();
    linked.done();
  });
  test("list and clear", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 })], h.deps);
    const list = harness({ run: h.firewall.run });
    assert.equal(await main(["list"], list.deps), 0);
    assert.equal(list.stdout(), "203.0.113.1\n2001:db8::1\n");
    const json = harness({ run: h.firewall.run });
    assert.equal(await main(["list", "--json"], json.deps), 0);
    assert.deepEqual(JSON.parse(json.stdout()), ["203.0.113.1", "2001:db8::1"]);
    const clear = harness({ run: h.firewall.run });
    assert.equal(await main(["clear"], clear.deps), 0);
    assert.match(
      clear.stdout(),
      /removed the sipcheck chain and its jump rules from iptables \(1 ban\) and ip6tables \(1 ban\)/,
    );
    assert.equal(h.firewall.chains[4].has(CHAIN), false);
    const again = harness({ run: h.firewall.run });
    assert.equal(await main(["clear"], again.deps), 0);
    assert.equal(again.stdout(), "sipcheck: nothing to clear\n");
    for (const x of [h, list, json, clear, again]) x.done();
  });
  test("clear --dry-run and -n change nothing, take no lock, and say what clear would remove", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 })], h.deps);
    const before = structuredClone(h.firewall.chains);
    const restores = h.firewall.restores().length;
    writeFileSync(h.deps.lockPath!, `${process.ppid} watch\n`);
    const alive = async (binary: string, args: readonly string[], input?: string) =>
      binary.endsWith("/kill")
        ? { code: 0, stdout: "", stderr: "" }
        : await h.firewall.run(binary, args, input);
    for (const flag of ["--dry-run", "-n"]) {
      const dry = harness({ run: alive, lockPath: h.deps.lockPath });
      assert.equal(await main(["clear", flag], dry.deps), 0, dry.stderr());
      assert.equal(
        dry.stdout(),
        "sipcheck: would remove the sipcheck chain and its jump rules from iptables (1 ban) " +
          "and ip6tables (1 ban)\n",
      );
      assert.equal(dry.stderr(), "");
      dry.done();
    }
    assert.deepEqual(h.firewall.chains, before);
    assert.equal(h.firewall.restores().length, restores, "no batch was sent");
    assert.equal(readFileSync(h.deps.lockPath!, "utf8"), `${process.ppid} watch\n`, "left alone");
    const user = harness({ uid: () => 1000 });
    assert.equal(await main(["clear", "-n"], user.deps), EXIT.noPermission, "it reads iptables");
    const nothing = harness();
    assert.equal(await main(["clear", "-n"], nothing.deps), 0);
    assert.equal(nothing.stdout(), "sipcheck: nothing to clear\n");
    for (const x of [h, user, nothing]) x.done();
  });
  test("clear whose IPv6 batch fails puts IPv4 back, and says so: 69", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 })], h.deps);
    h.firewall.chains[4].get("INPUT")!.push("-A INPUT -p icmp -j ACCEPT");
    const before = structuredClone(h.firewall.chains);
    h.firewall.fail[6] = true;
    const clear = harness({ run: h.firewall.run });
    assert.equal(await main(["clear"], clear.deps), EXIT.unavailable);
    assert.equal(
      clear.stderr(),
      "sipcheck: /usr/sbin/ip6tables-restore -w --noflush failed: iptables-restore: line 3 " +
        "failed; iptables had been cleared and was put back as it was: nothing was changed\n",
    );
    assert.equal(clear.stdout(), "");
    assert.deepEqual(h.firewall.chains, before);
    for (const x of [h, clear]) x.done();
  });
  test("clear that cannot put IPv4 back says what is gone: 69", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 })], h.deps);
    h.firewall.fail[6] = true;
    let ipv4Restores = 0;
    const clear = harness({
      run: (binary, args, input) =>
        binary === "/usr/sbin/iptables-restore" && ++ipv4Restores === 2
          ? Promise.resolve({
            code: 4,
            stdout: "",
            stderr: "iptables-restore v1.8.9 (nf_tables): \nline 2: oops\n",
          })
          : h.firewall.run(binary, args, input),
    });
    assert.equal(await main(["clear"], clear.deps), EXIT.unavailable);
    assert.equal(
      clear.stderr(),
      "sipcheck: /usr/sbin/ip6tables-restore -w --noflush failed: iptables-restore: line 3 " +
        "failed; iptables was cleared and could not be put back (/usr/sbin/iptables-restore -w " +
        "--noflush failed: line 2: oops): its bans come back with the next ban run\n",
    );
    assert.equal(h.firewall.chains[4].has(CHAIN), false);
    assert.deepEqual(h.firewall.bans(6), ["2001:db8::1/128"], "IPv6 untouched");
    for (const x of [h, clear]) x.done();
  });
  test("clear of a chain with foreign rules changes nothing in either family: 69", async () => {
    const h = harness();
    await main([writeLog(h.dir, { "203.0.113.1": 300, "[2001:db8::1]:5060": 250 })], h.deps);
    h.firewall.chains[6].get(CHAIN)!.push(`-A ${CHAIN} -s 2001:db8::/32 -j DROP`);
    const before = structuredClone(h.firewall.chains);
    const clear = harness({ run: h.firewall.run });
    assert.equal(await main(["clear"], clear.deps), EXIT.unavailable);
    assert.match(
      clear.stderr(),
      /^sipcheck: nothing was cleared, in either family: ip6tables: the sipcheck chain holds a rule sipcheck did not write \("-A sipcheck -s 2001:db8::\/32 -j DROP"\); sipcheck removes only what it wrote: delete or move those rules, then run clear again\n$/,
    );
    assert.deepEqual(h.firewall.chains, before);
    assert.equal(h.firewall.restores().length, 2, "only the two batches of the ban run");
    const list = harness({ run: h.firewall.run });
    assert.equal(await main(["list"], list.deps), 0);
    assert.equal(list.stdout(), "203.0.113.1\n2001:db8::1\n", "the bans, not the foreign rule");
    assert.match(
      list.stderr(),
      /^sipcheck: warning: ip6tables: the sipcheck chain holds a rule sipcheck did not write \("-A sipcheck -s 2001:db8::\/32 -j DROP"\); sipcheck bans only in a chain of its own: .*\n$/,
    );
    for (const x of [h, clear, list]) x.done();
  });
  test("200,000 offenders at once are banned, reported and listed", async () => {
    // Nothing calls a function with an argument per address (the stack would overflow).
    const many: Record<string, number> = {};
    for (let i = 0; i < 200_000; i++) many[`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`] = 2;
    const pieces: string[] = [];
    const h = harness({ stdout: (text) => void pieces.push(outputText(text)) });
    assert.equal(await main(["-t", "2", writeLog(h.dir, many)], h.deps), 0, h.stderr());
    assert.equal(h.firewall.bans(4).length, 200_000);
    // Written in pieces of about 64 KB, never as one string of every line.
    assert.ok(pieces.length > 100, `${pieces.length} pieces`);
    assert.ok(pieces.every((piece) => piece.length < 66_000));
    const report = pieces.join("").split("\n");
    assert.equal(report.length, 200_002, "a line per address, the summary, the last line feed");
    assert.equal(report[0], "banned          10.0.0.0      2 failures");
    const list = harness({ run: h.firewall.run });
    assert.equal(await main(["list"], list.deps), 0, list.stderr());
    assert.equal(list.stdout().split("\n").length, 200_001);
    for (const x of [h, list]) x.done();
  });
  test("reads standard input with -", async () => {
    const text = readFileSync(fixture("messages.log"));
    const h = harness({
      stdin: async function* () {
        for (let i = 0; i < text.length; i += 1000) yield text.subarray(i, i + 1000);
      },
    });
    assert.equal(await main(["-n", "--json", "-"], h.deps), 0);
    const report = JSON.parse(h.stdout());
    assert.equal(report.files, 1);
    assert.equal(report.addresses[0].ip, "203.0.113.50");
    h.done();
  });
});

test("runProgram: a program that exits without reading its input gives its code and stderr", async () => {
  // 4 MiB: more than a pipe holds, so the write fails once the program has gone.
  const input = "x".repeat(4 << 20);
  const result = await runProgram(
    "/bin/sh",
    ["-c", "echo 'line 3: no such chain' >&2; exit 2"],
    input,
  );
  assert.deepEqual(result, { code: 2, stdout: "", stderr: "line 3: no such chain\n" });
  const read = await runProgram("/bin/sh", ["-c", "wc -c"], input);
  assert.deepEqual(read, { code: 0, stdout: `${4 << 20}\n`, stderr: "" });
});
