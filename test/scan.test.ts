/**
 * Counting a whole log: PJSIP tries, open heads and forged continuations, long lines, chunk
 * boundaries, odd bytes, and the demo log's annotated totals.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { mkdtempSync, readFileSync, renameSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { isDeepStrictEqual } from "node:util";
import {
  addFailure,
  AddressCounts,
  addressHash,
  canonicalIPv6,
  createScanner,
  isVersionBefore,
  joinTally,
  logDecoder,
  MAX_LINE,
  newTally,
  OPEN_HEAD_WINDOW,
  parseLine,
  PART_LOOKBACK,
  scanFile,
  scanString,
  type Tally,
  TRIES_STEP_MAX,
} from "../sipcheck.ts";
import process from "node:process";
import { fixture } from "./helpers.ts";
import { HOSTILE_SHAPES, hostileText, writeLogFile } from "./loggen.ts";

/** `# expect-total: ADDRESS N` and `# expect-NAME: N` lines of a fixture. */
function expectations(text: string): { totals: Map<string, number>; values: Map<string, number> } {
  const totals = new Map<string, number>();
  const values = new Map<string, number>();
  for (const match of text.matchAll(/^# expect-total: (\S+) (\d+)$/gm)) {
    totals.set(match[1], Number(match[2]));
  }
  for (const match of text.matchAll(/^# expect-([a-z-]+): (\d+)$/gm)) {
    values.set(match[1], Number(match[2]));
  }
  return { totals, values };
}

const sorted = (counts: Iterable<[string, number]>) => new Map([...counts].sort());

/** A tally as plain data, so that assert.deepEqual compares what it counted. */
function plain(tally: Tally) {
  return { ...tally, counts: [...tally.counts], lastTries: [...tally.lastTries] };
}

const REGISTER = (address: string, reason = "Wrong password") =>
  `[2026-11-25 08:00:00.001] NOTICE[2210] chan_sip.c: Registration from '<sip:1@192.0.2.10>' ` +
  `failed for '${address}:5060' - ${reason}\n`;
const TRIES = (address: string, n: number) =>
  `[2026-11-25 08:10:00.001] NOTICE[2210] res_pjsip/pjsip_distributor.c: Request 'REGISTER' from ` +
  `'<sip:1@192.0.2.10>' failed for '${address}:5060' (callid: c${n}) - No matching endpoint ` +
  `found after ${n} tries in 0.0${n} ms\n`;
const BENIGN =
  '[2026-11-25 08:04:00.000] VERBOSE[2290] pbx.c: Executing [s@macro-dial:1] Set("PJSIP/1-1", "X=1") in new stack\n';

describe("PJSIP after N tries", () => {
  const count = (...ns: number[]) =>
    scanString(ns.map((n) => TRIES("203.0.113.60", n)).join("")).counts.get("203.0.113.60");
  test("a run 5, 6, 7 … k adds up to k requests", () => {
    assert.equal(count(5, 6, 7, 8, 9, 10), 10);
  });
  test("a new window (N not above the last) starts over", () => {
    assert.equal(count(5, 6, 7, 5, 6), 7 + 6);
  });
  test("a gap counts the requests in between", () => {
    assert.equal(count(5, 6, 9), 9);
  });
  test(`one line adds at most ${TRIES_STEP_MAX}, so a forged count cannot ban at once`, () => {
    assert.equal(count(100000), TRIES_STEP_MAX);
    assert.equal(count(5, 100000), 5 + TRIES_STEP_MAX);
  });
  test("plain failure lines add one each, beside a run", () => {
    const log = TRIES("203.0.113.60", 5) + REGISTER("203.0.113.60") + TRIES("203.0.113.60", 6);
    assert.equal(scanString(log).counts.get("203.0.113.60"), 7);
  });
  test("addFailure keeps the tally's total", () => {
    const tally = newTally();
    addFailure(tally, "203.0.113.1");
    addFailure(tally, "203.0.113.1", 5);
    addFailure(tally, "203.0.113.2", 7);
    assert.equal(tally.failures, 1 + 5 + 5);
    assert.equal(tally.counts.get("203.0.113.1"), 6);
  });
});

describe("open heads (records cut by a caller's line feed)", () => {
  const text = readFileSync(fixture("open-heads.log"), "latin1");
  const { totals, values } = expectations(text);
  test("open-heads.log counts exactly its annotated totals", () => {
    const tally = scanString(text);
    assert.deepEqual(sorted(tally.counts), sorted(totals));
    assert.equal(tally.openHeads, values.get("open-heads"));
    assert.equal(tally.suppressed, values.get("suppressed"));
  });
  const head =
    "[2026-11-25 08:03:30] NOTICE[2290] chan_sip.c: Call from '' (203.0.113.180:5060) to extension '00\n";
  const forged = REGISTER("198.51.100.66");
  test("the window ends 8 KB after the head: a line starting after it counts", () => {
    // Pad so that the forged line starts exactly at the end of the window, then one byte earlier.
    const gap = OPEN_HEAD_WINDOW;
    const padding = (n: number) => "x".repeat(n - 1) + "\n";
    const at = scanString(head + padding(gap) + forged);
    assert.equal(at.counts.get("198.51.100.66"), 1);
    const before = scanString(head + padding(gap - 1) + forged);
    assert.equal(before.counts.get("198.51.100.66"), undefined);
    assert.equal(before.suppressed, 1);
  });
  test("a closed head does not suppress anything", () => {
    const closed = head.replace(
      "'00\n",
      "'00' rejected because extension not found in context 'x'.\n",
    );
    assert.equal(scanString(closed + forged).counts.get("198.51.100.66"), 1);
  });
});

describe("lines and bytes", () => {
  test("counts physical lines, with or without a final line feed", () => {
    assert.equal(scanString("").lines, 0);
    assert.equal(scanString("a\nb\nc").lines, 3);
    assert.equal(scanString("a\nb\nc\n").lines, 3);
    assert.equal(scanString("\n\n").lines, 2);
    assert.equal(scanString(REGISTER("203.0.113.1").trimEnd()).counts.get("203.0.113.1"), 1);
  });
  test("CRLF line endings count like LF", () => {
    const log = REGISTER("203.0.113.1") + TRIES("203.0.113.2", 5) + REGISTER("2001:db8::1");
    const lf = scanString(log);
    const crlf = scanString(log.replaceAll("\n", "\r\n"));
    assert.deepEqual([...crlf.counts], [...lf.counts]);
    assert.equal(crlf.lines, lf.lines);
  });
  test(`a line over ${MAX_LINE} bytes is skipped, whatever it holds`, () => {
    const long = REGISTER("203.0.113.1").replace("<sip:1@", `<sip:${"1".repeat(MAX_LINE)}@`);
    const tally = scanString(long + REGISTER("203.0.113.2"));
    assert.deepEqual([...tally.counts.keys()], ["203.0.113.2"]);
    assert.equal(tally.longLines, 1);
    assert.equal(tally.lines, 2);
    const limit = REGISTER("203.0.113.3").replace("<sip:1@", "<sip:1@".padEnd(MAX_LINE, "1"));
    assert.equal(scanString(limit.slice(limit.length - 1 - MAX_LINE)).longLines, 0);
  });
  test("binary garbage and invalid UTF-8 never stop a scan", () => {
    const garbage = Buffer.alloc(300000);
    for (let i = 0; i < garbage.length; i++) garbage[i] = (i * 7919 + (i >> 3)) & 255;
    const tally = newTally();
    const scanner = createScanner(tally);
    scanner.write(Buffer.from(REGISTER("203.0.113.1")));
    scanner.write(garbage);
    scanner.write(Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0x0a]));
    scanner.write(
      Buffer.from(REGISTER("203.0.113.2").replace("<sip:1@", "<sip:\xe9\u00ff\ufffd@")),
    );
    scanner.end();
    assert.deepEqual([...tally.counts.keys()], ["203.0.113.1", "203.0.113.2"]);
  });
  test("a 100 MB line without a line feed is skipped in bounded memory", () => {
    const tally = newTally();
    const scanner = createScanner(tally);
    scanner.write(Buffer.from(REGISTER("203.0.113.1")));
    const chunk = Buffer.alloc(1 << 20, "a");
    for (let i = 0; i < 100; i++) scanner.write(chunk);
    scanner.write(Buffer.from("\n" + REGISTER("203.0.113.2")));
    const before = process.memoryUsage().rss;
    scanner.end();
    assert.deepEqual([...tally.counts.keys()], ["203.0.113.1", "203.0.113.2"]);
    assert.equal(tally.longLines, 1);
    assert.equal(tally.lines, 3);
    assert.ok(process.memoryUsage().rss - before < 64 << 20);
  });
  test("the result does not depend on where chunks break", () => {
    const log = readFileSync(fixture("open-heads.log"));
    const whole = scanString(log.toString("latin1"));
    for (const size of [1, 7, 64, 4093]) {
      const tally: Tally = newTally();
      const scanner = createScanner(tally);
      for (let i = 0; i < log.length; i += size) scanner.write(log.subarray(i, i + size));
      scanner.end();
      assert.deepEqual(plain(tally), plain(whole), `chunks of ${size} bytes`);
    }
  });
  test("many benign lines between failures are only counted", () => {
    const log = (BENIGN.repeat(1000) + REGISTER("203.0.113.9")).repeat(20);
    const tally = scanString(log);
    assert.equal(tally.lines, 20 * 1001);
    assert.equal(tally.counts.get("203.0.113.9"), 20);
  });
});

describe("decoding on Deno before 2.8.2 (windows-1252, as its Latin-1 is slow)", () => {
  test("Deno's versions compare by number", () => {
    assert.equal(isVersionBefore("2.8.1", "2.8.2"), true);
    assert.equal(isVersionBefore("2.7.14", "2.8.2"), true);
    assert.equal(isVersionBefore("1.46.3", "2.8.2"), true);
    assert.equal(isVersionBefore("2.8.2", "2.8.2"), false);
    assert.equal(isVersionBefore("2.10.0", "2.8.2"), false);
    assert.equal(isVersionBefore("2.9.6", "2.8.2"), false);
    assert.equal(isVersionBefore("3.0.0-rc.1", "2.8.2"), false);
    assert.equal(isVersionBefore("2.8.2+1a2b3c4", "2.8.2"), false); // a canary build
    assert.equal(isVersionBefore("2.8.1+1a2b3c4", "2.8.2"), true);
  });
  test("both decoders give one character per byte, the same one for every ASCII byte", () => {
    const every = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const boms = Buffer.from([0xef, 0xbb, 0xbf, 0x41, 0xff, 0xfe, 0x41, 0xfe, 0xff, 0x41]);
    for (const oldDeno of [false, true]) {
      const decode = logDecoder(oldDeno);
      for (
        const [bytes, from, to] of [[every, 0, 256], [every, 120, 170], [boms, 0, 10]] as const
      ) {
        const text = decode(bytes, from, to);
        assert.equal(text.length, to - from);
        for (let i = from; i < to; i++) {
          const code = text.charCodeAt(i - from);
          if (bytes[i] < 128 || !oldDeno) assert.equal(code, bytes[i], `byte ${bytes[i]}`);
          else assert.ok(code >= 128, `byte ${bytes[i]} read as ${code}`);
        }
      }
    }
    assert.equal(logDecoder(true)(every, 0x80, 0x81), "\u20ac"); // so it is windows-1252
  });
  test("a scan decoding windows-1252 counts exactly what one decoding Latin-1 counts", () => {
    // Every fixture, and each line of the annotated ones with a byte of 0x80 to 0x9F (the bytes
    // the two read differently) put in at every seventh place, in turn.
    const logs = ["families.log", "injection.log", "line-feed-forgeries.log", "open-heads.log"]
      .map((name) => readFileSync(fixture(name)));
    const variants: Buffer[] = [];
    const lineFeed = Buffer.from("\n");
    for (const log of logs.slice(0, 2)) {
      for (const line of log.toString("latin1").split("\n")) {
        const bytes = Buffer.from(line, "latin1");
        for (let at = 0; at <= bytes.length; at += 7) {
          const byte = Buffer.from([0x80 + (at % 32)]);
          variants.push(Buffer.concat([bytes.subarray(0, at), byte, bytes.subarray(at), lineFeed]));
        }
      }
    }
    for (const log of [...logs, readFileSync(fixture("messages.log")), Buffer.concat(variants)]) {
      const [latin1, windows1252] = [false, true].map((oldDeno) => {
        const tally = newTally();
        const scanner = createScanner(tally, undefined, undefined, logDecoder(oldDeno));
        scanner.write(log);
        scanner.end();
        return plain(tally);
      });
      assert.ok(latin1.failures > 0);
      assert.deepEqual(windows1252, latin1);
    }
  });
});

describe("prefixes that lack their `]` or `: ` (searches that run on into the next lines)", () => {
  const pieces = [
    () => "[" + "x".repeat(30),
    () => "[x] NOTICE[1] " + "y".repeat(30),
    () => "[x] NOTICE[1] chan_sip.c:",
    () => "[2026-11-25 08:00:00.001] NOTICE[2210]",
    () => "]: ] : :",
    () => BENIGN.trimEnd(),
    () => REGISTER("203.0.113.7").trimEnd(),
    () => REGISTER("203.0.113.8").trimEnd().replace("[2026-11-25 08:00:00.001]", "[a: b]"),
  ];
  test("a scan counts what reading each line alone counts, in any order of such lines", () => {
    let seed = 7;
    const next = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 16;
    for (let round = 0; round < 200; round++) {
      const lines = Array.from({ length: 1 + next() % 60 }, () => pieces[next() % pieces.length]());
      const expected = new Map<string, number>();
      for (const line of lines) {
        const address = parseLine(line)?.address;
        if (address) expected.set(address, (expected.get(address) ?? 0) + 1);
      }
      const tally = scanString(lines.join("\n") + "\n");
      assert.deepEqual(new Map(tally.counts), expected, lines.join("\n"));
    }
  });
});

describe("the benchmark's hostile lines (test/loggen.ts HOSTILE_SHAPES)", () => {
  for (const shape of Object.keys(HOSTILE_SHAPES)) {
    test(`${shape}: nothing counts, and the lines after them count as usual`, () => {
      const { text, lines } = hostileText(shape, 300_000);
      const after = BENIGN.repeat(100) + REGISTER("203.0.113.9").repeat(3);
      const tally = scanString(text + after);
      assert.equal(tally.lines, lines + 103);
      assert.deepEqual([...tally.counts], [["203.0.113.9", 3]]);
      assert.equal(tally.ambiguous + tally.suppressed + tally.longLines, 0);
    });
  }
});

describe("fixtures/messages.log (the demo)", () => {
  test("counts exactly its annotated totals", () => {
    const text = readFileSync(fixture("messages.log"), "latin1");
    const { totals } = expectations(text);
    assert.ok(totals.size >= 5);
    assert.deepEqual(sorted(scanString(text).counts), sorted(totals));
  });
});

describe("reading a log in parts (several cores at once)", () => {
  /** Scans `text` as parts starting at `starts` (byte offsets right after a line feed), joined. */
  function inParts(text: string, starts: number[], lookback = PART_LOOKBACK): Tally {
    const bytes = Buffer.from(text, "latin1");
    const total = newTally();
    starts.forEach((countFrom, k) => {
      const tally = k === 0 ? total : newTally();
      const part = {
        offset: Math.max(0, countFrom - lookback),
        countFrom,
        firstTries: new AddressCounts(),
      };
      const scanner = createScanner(tally, undefined, part);
      scanner.write(bytes.subarray(part.offset, starts[k + 1] ?? bytes.length));
      scanner.end();
      // Every other part is joined as a worker thread sends it: its counts as typed arrays.
      const sent = (t: Tally) => ({
        ...t,
        counts: t.counts.snapshot(),
        lastTries: t.lastTries.snapshot(),
      });
      const first = k % 2 === 0 ? part.firstTries : part.firstTries.snapshot();
      if (k > 0) joinTally(total, k % 2 === 0 ? tally : sent(tally), first);
    });
    return total;
  }
  const lineStarts = (text: string) =>
    [...text.matchAll(/\n/g)].map((m) => m.index! + 1).filter((i) => i < text.length);

  test("open heads: every cut gives the same tally as one reading", () => {
    const text = readFileSync(fixture("open-heads.log"), "latin1");
    const whole = scanString(text);
    for (const cut of lineStarts(text)) {
      assert.deepEqual(plain(inParts(text, [0, cut])), plain(whole), `cut at ${cut}`);
    }
    const blind = lineStarts(text).filter((cut) =>
      !isDeepStrictEqual(plain(inParts(text, [0, cut], 1)), plain(whole))
    );
    assert.ok(blind.length > 0, "without the look back, some cuts would count forged lines");
  });
  test("tries runs across cuts, and three parts", () => {
    const text = [5, 6, 7, 8, 5, 6, 100, 9].map((n) => TRIES("203.0.113.60", n)).join("") +
      REGISTER("203.0.113.60") + TRIES("203.0.113.61", 5) + BENIGN +
      [6, 7].map((n) => TRIES("203.0.113.61", n)).join("");
    const whole = scanString(text);
    const starts = lineStarts(text);
    for (const a of starts) {
      assert.deepEqual(plain(inParts(text, [0, a])), plain(whole), `cut at ${a}`);
      for (const b of starts.filter((b) => b > a)) {
        assert.deepEqual(
          plain(inParts(text, [0, a, b])),
          plain(whole),
          `cuts at ${a} and ${b}`,
        );
      }
    }
  });
  test("a part may start inside a line over 8000 bytes", () => {
    const text = REGISTER("203.0.113.1") + "x".repeat(MAX_LINE * 2) + "\n" +
      REGISTER("203.0.113.2");
    const whole = scanString(text);
    const cut = text.length - REGISTER("203.0.113.2").length;
    assert.deepEqual(plain(inParts(text, [0, cut])), plain(whole));
  });
});

describe("scanFile: one file read by worker threads at once", () => {
  const skip = availableParallelism() < 2 && "one core here: the file would be read by one thread";
  const dir = mkdtempSync(join(tmpdir(), "sipcheck-parts-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const generated = join(dir, "generated.log");
  writeLogFile(generated, { lines: 30_000, seed: 3 });
  const text = readFileSync(fixture("open-heads.log"), "latin1") +
    [5, 6, 7].map((n) => TRIES("203.0.113.60", n)).join("") +
    readFileSync(generated, "latin1") + [8, 9].map((n) => TRIES("203.0.113.60", n)).join("") +
    readFileSync(fixture("messages.log"), "latin1");
  const path = join(dir, "all.log");
  writeFileSync(path, Buffer.from(text, "latin1"));
  const whole = scanString(text);
  const cases = [
    { name: "a worker thread takes over the second half", waitForReaders: true },
    { name: "whatever the worker threads took over, or not", waitForReaders: false },
  ];
  test(
    "gives the tally of one reading when this thread takes back piece after piece",
    { skip },
    async () => {
      const threaded = newTally();
      const taken: [number, number][] = [];
      await scanFile(path, threaded, {
        parallelMin: 0,
        splitMin: 0,
        stealMin: 0,
        share: 0.99,
        waitForReaders: true,
        onTakeBack: (start, end) => taken.push([start, end]),
      });
      assert.ok(taken.length > 0, "this thread took something back");
      for (const [start] of taken) assert.equal(text.charCodeAt(start - 1), 10, "at a line start");
      assert.deepEqual(plain(threaded), plain(whole));
    },
  );
  const moves = [
    {
      name: "renamed, and another file put in its place",
      move: (log: string) => {
        renameSync(log, `${log}.1`);
        writeFileSync(log, REGISTER("192.0.2.99").repeat(1000));
      },
    },
    { name: "deleted", move: (log: string) => unlinkSync(log) },
  ];
  for (const { name, move } of moves) {
    for (const waitForReaders of [true, false]) {
      test(
        `a log ${name} once open is read to its end by the threads that have it open ` +
          `(waitForReaders: ${waitForReaders})`,
        { skip },
        async () => {
          const log = join(dir, `moved-${moves.findIndex((m) => m.name === name)}.log`);
          writeFileSync(log, Buffer.from(text, "latin1"));
          const threaded = newTally();
          await scanFile(log, threaded, {
            parallelMin: 0,
            splitMin: 0,
            waitForReaders,
            onOpened: () => move(log),
          });
          assert.deepEqual(plain(threaded), plain(whole));
        },
      );
    }
  }
  test(
    "a long stretch without a line feed (a NUL tail) is searched for a cut once, not on every read",
    { skip },
    async () => {
      // Worker threads wait from the start; this thread reads 256 KiB at a time and, before each
      // read, looks for a line start where a waiting thread's part could begin. Searching the
      // tail again each time read it 8 times over (time quadratic in its length).
      const head = readFileSync(fixture("messages.log"));
      const bytes = Buffer.concat([head, Buffer.alloc(8 << 20)]);
      const log = join(dir, "nul-tail.log");
      writeFileSync(log, bytes);
      const threaded = newTally();
      let searched = 0;
      await scanFile(log, threaded, {
        parallelMin: 0,
        splitMin: 0,
        waitForReaders: true,
        onLineSearch: (start, end) => searched += end - start,
      });
      assert.ok(searched > 0, "a cut was searched for");
      assert.ok(
        searched <= bytes.length,
        `${searched} bytes searched in a file of ${bytes.length}`,
      );
      assert.deepEqual(plain(threaded), plain(scanString(bytes.toString("latin1"))));
    },
  );
  for (const { name, waitForReaders } of cases) {
    test(
      `gives the tally of one reading, across open heads, tries runs and a generated log (${name})`,
      { skip },
      async () => {
        const threaded = newTally();
        await scanFile(path, threaded, { parallelMin: 0, splitMin: 0, waitForReaders });
        assert.ok(whole.failures > 5000 && whole.openHeads > 0, "the log holds what is tested");
        assert.deepEqual(plain(threaded), plain(whole));
      },
    );
  }
});

describe("records cut by a caller's line feeds (line-feed-forgeries.log)", () => {
  const text = readFileSync(fixture("line-feed-forgeries.log"), "latin1");
  const sequences = text.split("\n### sequence ").slice(1).map((block) => {
    const lines = block.split("\n");
    return {
      name: lines[0],
      knownLimit: lines.includes("# known limit"),
      totals: expectations(block).totals,
      log: lines.slice(1).filter((line) => line !== "" && !line.startsWith("#")),
    };
  });
  assert.ok(sequences.length >= 8);
  const forged = (tally: Tally) =>
    [...tally.counts.keys()].filter((ip) => ip.startsWith("198.51.100."));

  for (const sequence of sequences.filter((s) => !s.knownLimit)) {
    test(`plain text: ${sequence.name}`, () => {
      const tally = scanString(sequence.log.join("\n") + "\n");
      assert.deepEqual(sorted(tally.counts), sorted(sequence.totals));
    });
  }
  for (const sequence of sequences.filter((s) => s.knownLimit)) {
    test(`JSON channel: ${sequence.name} counts only the caller`, () => {
      // The same record as Asterisk's JSON formatter writes it: one line, line feeds escaped.
      const [, level, file, message] =
        /^\[[^\]]*\] ([A-Z]+)\[\d+\](?:\[C-[0-9a-f]{8}\])? ([\w./-]+\.c): (.*)$/.exec(
          sequence.log[0],
        )!;
      const record = JSON.stringify({
        hostname: "",
        timestamp: "2026-11-25 10:00:00.001",
        identifiers: { lwp: 2290, callid: "" },
        logmsg: {
          location: { filename: file, function: "f", line: 1 },
          level,
          message: [message, ...sequence.log.slice(1)].join("\n") + "\n",
        },
      });
      const tally = scanString(record + "\n");
      assert.deepEqual(forged(tally), []);
      assert.ok(tally.counts.size <= 1);
      const text = scanString(sequence.log.join("\n") + "\n");
      assert.notDeepEqual(
        forged(text),
        [],
        "in plain text the forgery does count (the known limit)",
      );
    });
  }
});

describe("AddressCounts (a Map of addresses in little memory)", () => {
  test("behaves like a Map<string, number>, in first-seen order", () => {
    const counts = new AddressCounts();
    const model = new Map<string, number>();
    const addresses = [
      "203.0.113.5",
      "2001:db8::1",
      "0.0.0.0",
      "255.255.255.255",
      "01.2.3.4",
      "1.2.3.4",
      "x",
      "",
      "::",
    ];
    let seed = 7;
    for (let step = 0; step < 20000; step++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const address = step % 3 === 0
        ? addresses[seed % addresses.length]
        : `198.51.${seed % 7}.${seed % 251}`;
      if (seed % 5 === 0) assert.equal(counts.delete(address), model.delete(address));
      else if (seed % 5 === 1) {
        counts.add(address, seed % 4);
        model.set(address, (model.get(address) ?? 0) + (seed % 4));
      } else {
        const value = (model.get(address) ?? 0) + (seed % 9);
        counts.set(address, value);
        model.set(address, value);
      }
      if (step % 997 === 0) {
        assert.deepEqual([...counts], [...model], `after ${step} steps`);
        assert.equal(counts.size, model.size);
      }
    }
    assert.deepEqual([...counts], [...model]);
    assert.deepEqual([...AddressCounts.from(counts.snapshot())], [...model], "through a snapshot");
    assert.deepEqual([...counts.atLeast(20)], [...model].filter(([, value]) => value >= 20));
    const byValue = [...model].sort(([, a], [, b]) => b - a); // stable: first seen first
    assert.deepEqual([...counts.byValue()], byValue, "by value");
    const other = new AddressCounts().set("1.2.3.4", 5).set("2001:db8::1", 7).set("x", 1);
    const sum = new Map(model);
    for (const [address, value] of other) sum.set(address, (sum.get(address) ?? 0) + value);
    const merged = AddressCounts.from(counts.snapshot());
    merged.merge(other, "add");
    assert.deepEqual([...merged], [...sum], "merge, adding");
    merged.merge(other, "set");
    assert.deepEqual([...merged], [...new Map([...sum, ...other])], "merge, setting");
    const fromSnapshot = AddressCounts.from(counts.snapshot());
    fromSnapshot.merge(other.snapshot(), "add");
    assert.deepEqual([...fromSnapshot], [...sum], "merge of a snapshot, adding");
    fromSnapshot.merge(other.snapshot(), "set");
    assert.deepEqual([...fromSnapshot], [...new Map([...sum, ...other])], "… and setting");
    assert.equal(
      counts.get("01.2.3.4") === counts.get("1.2.3.4"),
      model.get("01.2.3.4") === model.get("1.2.3.4"),
    );
    const handed = AddressCounts.from(counts.handOver());
    assert.deepEqual([...handed], [...model], "handed over");
    assert.deepEqual([...counts], [], "nothing left after handing over");
    handed.add("1.2.3.4", 1);
    counts.add("1.2.3.4", 5);
    assert.equal(handed.get("1.2.3.4"), (model.get("1.2.3.4") ?? 0) + 1, "no array shared");
    handed.clear();
    assert.equal(handed.size, 0);
    assert.deepEqual([...handed], []);
  });
  test("IPv6 in every written form: only the canonical one is stored as numbers, each text is its own key", () => {
    // The same few addresses written canonically and not (upper case, leading zeros, `::` in the
    // wrong run or for one group, no `::`, IPv4-mapped): a Map keeps every text apart and gives
    // each back as written, so the counts must too.
    let seed = 3;
    const random = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const groupsOf = () =>
      Array.from({ length: 8 }, () => [0, 0, 0, 1, 0xdb8, 0xffff, 0xabc, 0x10][random(8)]);
    const write = (g: number[]) => {
      let hex = g.map((v) => v.toString(16));
      if (random(4) === 0) hex = hex.map((h) => h.toUpperCase());
      if (random(4) === 0) hex = hex.map((h) => h.padStart(1 + random(4), "0"));
      if (random(3) === 0) return hex.join(":");
      const zeroAt = g.findIndex((v, k) => v === 0 && k >= random(8));
      if (zeroAt === -1) return hex.join(":");
      let end = zeroAt;
      while (end < 8 && g[end] === 0 && random(4) !== 0) end++;
      if (end === zeroAt) end++;
      return `${hex.slice(0, zeroAt).join(":")}::${hex.slice(end).join(":")}`;
    };
    const counts = new AddressCounts();
    const model = new Map<string, number>();
    let canonical = 0;
    for (let step = 0; step < 20000; step++) {
      const groups = groupsOf();
      const text = random(10) === 0
        ? `::ffff:${random(256)}.2.3.4`
        : random(10) === 0
        ? `${groups.slice(0, 6).map((v) => v.toString(16)).join(":")}:1.2.3.4`
        : write(groups);
      if (isIP(text) !== 6) continue;
      if (canonicalIPv6(text) === text) canonical++;
      const value = (model.get(text) ?? 0) + 1 + random(3);
      if (random(2)) counts.set(text, value);
      else counts.add(text, value - (model.get(text) ?? 0));
      model.set(text, value);
      if (random(50) === 0) assert.equal(counts.delete(text), model.delete(text));
    }
    assert.ok(canonical > 1000 && canonical < 15000, `${canonical} canonical of 20000`);
    assert.deepEqual([...counts], [...model]);
    for (const [text, value] of model) assert.equal(counts.get(text), value, text);
    assert.deepEqual([...AddressCounts.from(counts.snapshot())], [...model], "through a snapshot");
    const merged = new AddressCounts();
    merged.merge(counts, "add");
    merged.merge(counts, "add");
    assert.deepEqual([...merged], [...model].map(([text, value]) => [text, 2 * value]), "merged");
  });
  test("addresses that differ only in their high bits spread over the table", () => {
    // Linear probing turns a hash that gathers keys into quadratic time; the slot is the top 17
    // bits here (a table of 131,072 slots), as AddressCounts takes them.
    const shift = 32 - 17;
    const spread = (hashes: number[]) => new Set(hashes.map((hash) => hash >>> shift)).size;
    const v4 = Array.from(
      { length: 65536 },
      (_, i) => addressHash(false, (i << 16) >>> 0, 0, 0, 0),
    );
    const v6 = Array.from(
      { length: 65536 },
      (_, i) => addressHash(true, 0x20010db8, 0, 0, (i << 16) >>> 0), // 2001:db8::xxxx:0
    );
    const v6Prefix = Array.from(
      { length: 65536 },
      (_, i) => addressHash(true, 0x20010db8, (i << 16) >>> 0, 0, 1), // 2001:db8:xxxx::1
    );
    // Random slots would give about 51,600 distinct ones of 65,536 keys.
    for (const [name, hashes] of [["a.b.0.0", v4], ["…::x:0", v6], ["…:x::1", v6Prefix]] as const) {
      assert.ok(spread(hashes) > 45000, `${name}: ${spread(hashes)} distinct slots`);
    }
  });
  test("values that are not 32-bit counts are kept exactly, before and after growing", () => {
    // Counts are kept in 32 bits; a value that does not fit turns them all into floats.
    const counts = new AddressCounts();
    const model = new Map<string, number>();
    const put = (address: string, value: number) => {
      counts.set(address, value);
      model.set(address, value);
    };
    for (let i = 0; i < 300; i++) put(`192.0.${i >> 8}.${i & 255}`, i);
    counts.add("192.0.0.7", 2 ** 32 - 1 - 7);
    model.set("192.0.0.7", 2 ** 32 - 1);
    assert.deepEqual([...counts], [...model], "the largest 32-bit count");
    counts.add("192.0.0.7", 1);
    model.set("192.0.0.7", 2 ** 32);
    put("2001:db8::1", 2 ** 53);
    put("x", -1);
    put("198.51.100.1", 0.5);
    // Growing after the change keeps the floats (and the entries before it).
    for (let i = 0; i < 5000; i++) put(`10.0.${i >> 8}.${i & 255}`, i + 0.25);
    assert.deepEqual([...counts], [...model]);
    assert.deepEqual([...AddressCounts.from(counts.snapshot())], [...model], "through a snapshot");
    const merged = new AddressCounts();
    merged.merge(counts.snapshot(), "add");
    merged.merge(counts, "add");
    assert.deepEqual([...merged], [...model].map(([text, value]) => [text, 2 * value]), "merged");
  });
  test("a million IPv4 addresses", () => {
    const counts = new AddressCounts();
    for (let i = 0; i < 1_000_000; i++) counts.set(`10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, i);
    assert.equal(counts.size, 1_000_000);
    assert.equal(counts.get("10.15.66.63"), 0xf423f);
    assert.equal(counts.get("10.15.66.64"), undefined);
  });
});
