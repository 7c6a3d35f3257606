/**
 * Reading one line: every family, prefix form and injection case, table-driven from the
 * annotated fixtures and the shared corpus; addresses and address blocks.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";
import { describe, test } from "node:test";
import {
  canonicalIPv6,
  ipv6Groups,
  isInAny,
  normaliseAddress,
  parseCidr,
  parseLine,
  scanString,
} from "../sipcheck.ts";
import { fixture } from "./helpers.ts";

/** A deterministic generator: `random(n)` is an integer from 0 to n - 1. */
function seeded(seed: number): (n: number) => number {
  return (n) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
}

/** One annotated case: the log line and what must be counted for it. */
interface Case {
  source: string;
  line: number;
  text: string;
  address: string | null;
  family: string;
  /** Failures the line counts for when scanned (PJSIP `after N tries` lines stand for more). */
  counts: number;
  note: string;
}

/** Reads `# expect: ADDRESS FAMILY [counts N] [-- note]` (ours) or `# EXPECT ADDRESS family`
 * (the corpus). */
function readCases(name: string): Case[] {
  const lines = readFileSync(fixture(name), "latin1").split("\n");
  const cases: Case[] = [];
  lines.forEach((line, i) => {
    const match = /^# (?:expect:|EXPECT) (\S+) (\S+)(?: counts (\d+))?(?: -- (.*))?$/.exec(line);
    if (!match || match[1] === "<address|none>") return;
    cases.push({
      source: name,
      line: i + 2,
      text: lines[i + 1],
      address: match[1] === "none" ? null : match[1],
      family: match[2],
      counts: Number(match[3] ?? 1),
      note: match[4] ?? "",
    });
  });
  return cases;
}

const ours = readCases("families.log");
const injections = readCases("injection.log");
const corpus = readCases("corpus/asterisk-lines.txt");

/** The counts that scanning all the cases as one log must give. */
function expectedCounts(cases: Case[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const c of cases) {
    if (c.address) counts.set(c.address, (counts.get(c.address) ?? 0) + c.counts);
  }
  return counts;
}

describe("families.log: one case per line", () => {
  test("has cases for every family", () => {
    const families = new Set(ours.filter((c) => c.address).map((c) => c.family));
    for (
      const family of [
        "sip-register",
        "sip-call",
        "pjsip-request",
        "pjsip-call",
        "iax2-auth",
        "iax2-noreg",
        "iax2-rejected",
        "ami-auth",
        "security-event",
        "dialplan-unknown-sip",
      ]
    ) assert.ok(families.has(family), `no counted case for ${family}`);
  });
  for (const c of ours) {
    test(`line ${c.line}: ${c.address ?? "none"} ${c.family}${c.note ? ` (${c.note})` : ""}`, () => {
      const result = parseLine(c.text);
      assert.equal(result?.address ?? null, c.address);
      if (c.family === "-") assert.equal(result, null, "a line of no family");
      else if (c.address) assert.equal(result?.family, c.family);
    });
  }
  test("scanning the whole file counts exactly the expected addresses", () => {
    const tally = scanString(readFileSync(fixture("families.log"), "latin1"));
    assert.deepEqual(new Map([...tally.counts].sort()), new Map([...expectedCounts(ours)].sort()));
    assert.equal(tally.openHeads, 0);
  });
});

describe("injection.log: cases from an adversarial review", () => {
  assert.ok(injections.length >= 40, "the cases were read");
  for (const c of injections) {
    test(`line ${c.line}: ${c.address ?? "none"} ${c.family} (${c.note.slice(0, 90)})`, () => {
      const result = parseLine(c.text);
      assert.equal(result?.address ?? null, c.address);
      if (c.family !== "-" && c.address) assert.equal(result?.family, c.family);
    });
  }
  test("scanning the whole file counts exactly the expected addresses", () => {
    const tally = scanString(readFileSync(fixture("injection.log"), "latin1"));
    assert.deepEqual(
      new Map([...tally.counts].sort()),
      new Map([...expectedCounts(injections)].sort()),
    );
  });
});

describe("shared corpus (asterisk-lines.txt)", () => {
  assert.ok(corpus.length >= 60, "the corpus was read");
  for (const c of corpus) {
    test(`line ${c.line}: ${c.address ?? "none"} ${c.family}`, () => {
      assert.equal(parseLine(c.text)?.address ?? null, c.address);
      // The hot path's prefilter must not drop a line parseLine counts.
      const tally = scanString(c.text + "\n");
      assert.deepEqual([...tally.counts.keys()], c.address ? [c.address] : []);
    });
  }
});

describe("line endings and bytes", () => {
  const line = ours.find((c) => c.family === "sip-register" && c.address)!;
  test("a CR before the LF is not part of the line", () => {
    assert.equal(parseLine(line.text + "\r")?.address, line.address);
  });
  test("a CR elsewhere is kept (split on LF only)", () => {
    const cut = line.text.replace("Registration", "Regis\rtration");
    assert.equal(parseLine(cut), null);
  });
  test("other Unicode line breaks do not split a line", () => {
    const text = line.text.replace("<sip:", "<\u2028\u0085sip:");
    assert.equal(parseLine(text)?.address, line.address);
  });
  test("a character above 255 is not read as the byte its code ends in", () => {
    // The readers look at bytes; a character is not its low byte (U+0127 would be a quote,
    // U+015D a `]`, U+0131 a `1`). Each change is checked with the character it would pass for.
    const pjsip = ours.find((c) => c.family === "pjsip-request" && c.address)!;
    const changes: [Case, string, string, string][] = [
      [line, "' - ", "\u0127 - ", "' - "],
      [pjsip, "' (callid: ", "\u0127 (callid: ", "' (callid: "],
      [line, "] chan_sip.c: ", "\u015d chan_sip.c: ", "] chan_sip.c: "],
    ];
    for (const [c, from, wide, narrow] of changes) {
      assert.ok(c.text.includes(from), c.text);
      assert.equal(parseLine(c.text.replace(from, wide)), null, wide);
      assert.equal(parseLine(c.text.replace(from, narrow))?.address, c.address);
      const json = JSON.stringify({
        logmsg: {
          level: "NOTICE",
          location: {
            filename: c.family === "sip-register" ? "chan_sip.c" : "res_pjsip/pjsip_distributor.c",
          },
          message: c.text.slice(c.text.indexOf(": ") + 2).replace(from, wide) + "\n",
        },
      });
      if (!from.startsWith("]")) assert.equal(parseLine(json), null, json);
    }
    const one = line.text.replace(`'${line.address}'`, `'${line.address!.slice(0, -1)}\u0131'`);
    assert.notEqual(one, line.text);
    assert.equal(parseLine(one)?.address ?? null, null);
  });
});

describe("normaliseAddress", () => {
  const table: [string, "bare" | "sockaddr" | "srcname", string | null][] = [
    ["203.0.113.5", "bare", "203.0.113.5"],
    ["203.0.113.5", "sockaddr", "203.0.113.5"],
    ["203.0.113.5", "srcname", null],
    ["203.0.113.5:5060", "sockaddr", "203.0.113.5"],
    ["203.0.113.5:5060", "srcname", "203.0.113.5"],
    ["203.0.113.5:5060", "bare", null],
    ["203.0.113.5:", "sockaddr", null],
    ["203.0.113.5:123456", "sockaddr", null],
    ["203.0.113.5:50a0", "sockaddr", null],
    ["[2001:db8::1]:5060", "sockaddr", "2001:db8::1"],
    ["[2001:db8::1]:5060", "srcname", "2001:db8::1"],
    ["[2001:db8::1]:5060", "bare", null],
    ["[2001:db8::1]", "sockaddr", null],
    ["2001:db8::1", "bare", "2001:db8::1"],
    ["2001:db8::1", "sockaddr", null],
    ["2001:db8::61:5060", "srcname", "2001:db8::61"],
    ["2001:DB8:0:0:0:0:0:1", "bare", "2001:db8::1"],
    ["2001:0db8:0000:0000:0001:0000:0000:0001", "bare", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:0:0:0:1", "bare", "2001:db8:0:1::1"],
    ["2001:db8:1:1:1:1:0:1", "bare", "2001:db8:1:1:1:1:0:1"],
    ["::1", "bare", "::1"],
    ["::", "bare", "::"],
    ["::ffff:203.0.113.9", "bare", "203.0.113.9"],
    ["::FFFF:cb00:7109", "bare", "203.0.113.9"],
    ["[::ffff:203.0.113.9]:5060", "sockaddr", "203.0.113.9"],
    ["::ffff:203.0.113.9:5060", "srcname", "203.0.113.9"],
    ["fe80::1%eth0", "bare", "fe80::1"],
    ["(null)", "sockaddr", null],
    ["pbx.example.com", "bare", null],
    ["pbx.example.com:5060", "sockaddr", null],
    ["203.0.113.256", "bare", null],
    ["203.0.113", "bare", null],
    ["01.2.3.4", "bare", null],
    ["", "bare", null],
    ["2001:db8::g", "bare", null],
    // From the review of the one-pass IPv4 reading: the same answers as the general path.
    ["1.2.3.4:05060", "srcname", "1.2.3.4"],
    ["2001:db8::61:5060", "srcname", "2001:db8::61"],
    ["2001:db8::61:5060", "bare", "2001:db8::61:5060"],
    ["1.2.3.4", "srcname", null],
    ["1.2.3.4:", "sockaddr", null],
    ["1.2.3.4:123456", "sockaddr", null],
    ["01.2.3.4:5060", "sockaddr", null],
    ["1.2.3.4.5:5060", "srcname", null],
    ["1.2.3.4:5060", "bare", null],
    ["1.2.3.256:5060", "sockaddr", null],
    ["1.2.3.4%eth0", "bare", null],
    ["[1.2.3.4]:5060", "sockaddr", null],
    ["1.2.3.4:5:6", "srcname", null],
  ];
  for (const [text, form, expected] of table) {
    test(`${JSON.stringify(text)} as ${form} → ${expected}`, () => {
      assert.equal(normaliseAddress(text, form), expected);
    });
  }
  test("canonicalIPv6 compresses the first of equal zero runs", () => {
    assert.equal(canonicalIPv6("2001:db8:0:0:1:0:0:1"), "2001:db8::1:0:0:1");
    assert.equal(canonicalIPv6("0:0:0:0:0:0:0:0"), "::");
    assert.equal(canonicalIPv6("1:0:0:0:0:0:0:0"), "1::");
  });
  test("IPv4 with or without a port, in every form, on 50,000 generated texts", () => {
    const random = seeded(5);
    const octets = ["0", "1", "9", "10", "99", "100", "199", "255", "256", "01", "001", "1000"];
    const octet = () => octets[random(octets.length)];
    const forms = ["bare", "sockaddr", "srcname"] as const;
    for (let n = 0; n < 50_000; n++) {
      let text = Array.from({ length: 3 + random(3) }, octet).join(".");
      if (random(2)) text += ":" + "0123456789".slice(0, random(8));
      if (random(8) === 0) text += pick([":", ".", "%eth0", "a", ":1"]);
      const form = forms[random(3)];
      const colon = text.indexOf(":");
      const host = colon === -1 ? text : text.slice(0, colon);
      const port = colon === -1 ? null : text.slice(colon);
      const expected = isIP(host) !== 4
        ? null
        : port === null
        ? (form === "srcname" ? null : host)
        : form !== "bare" && /^:\d{1,5}$/.test(port)
        ? host
        : null;
      assert.equal(normaliseAddress(text, form), expected, `${JSON.stringify(text)} as ${form}`);
    }
    function pick(list: string[]) {
      return list[random(list.length)];
    }
  });
  test("ipv6Groups: edge cases", () => {
    assert.deepEqual(ipv6Groups("1:2:3:4:5:6:7::"), [1, 2, 3, 4, 5, 6, 7, 0]);
    assert.deepEqual(ipv6Groups("::1:2:3:4:5:6:7"), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.deepEqual(ipv6Groups("1:2:3:4:5::1.2.3.4"), [1, 2, 3, 4, 5, 0, 258, 772]);
    assert.deepEqual(ipv6Groups("1:2:3:4:5:6:1.2.3.4"), [1, 2, 3, 4, 5, 6, 258, 772]);
    assert.deepEqual(ipv6Groups("::"), [0, 0, 0, 0, 0, 0, 0, 0]);
    for (
      const bad of [
        "1::2:3:4:5:6:7:8",
        "1:2:3:4:5:6::1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "::01.2.3.4",
        "::1.2.3",
        ":::",
        "1:",
        ":1",
        "12345::",
        "1.2.3.4",
        "::ffff:1a.2.3.4",
        "1::2::3",
        "fe80::1%eth0",
      ]
    ) assert.equal(ipv6Groups(bad), null, bad);
  });
  test("ipv6Groups accepts exactly what isIP accepts, and reads the groups the URL parser reads", () => {
    const random = seeded(11);
    const pick = (list: readonly string[]) => list[random(list.length)];
    const hex = "0123456789abcdefABCDEF";
    const group = () =>
      Array.from({ length: random(8) ? 1 + random(4) : random(6) }, () => hex[random(hex.length)])
        .join("");
    const ipv4s = ["1.2.3.4", "255.255.255.255", "0.0.0.0", "256.1.1.1", "01.2.3.4", "1.2.3"];
    const alphabet = "0123456789abcdefABCDEFg:.";
    /** Groups joined by colons, maybe one `::`, maybe a dotted tail, then maybe one typo. */
    const candidate = () => {
      const pieces = Array.from({ length: 1 + random(9) }, group);
      if (random(3) === 0) pieces.push(pick(ipv4s));
      let text = pieces.join(":");
      if (random(2)) {
        const at = random(text.length + 1);
        if (at === 0 || at === text.length || text[at] === ":") {
          text = text.slice(0, at) + ":" + text.slice(at);
        }
      }
      if (random(3) === 0) {
        const at = random(text.length + 1);
        text = text.slice(0, at) + pick([alphabet[random(alphabet.length)], ""]) +
          text.slice(at + random(2));
      }
      return text;
    };
    /** The groups of the hex-only, compressed text the URL parser gives back. */
    const groupsOfUrl = (host: string): number[] => {
      const [head, tail] = host.slice(1, -1).split("::");
      const read = (part: string | undefined) =>
        part ? part.split(":").map((piece) => parseInt(piece, 16)) : [];
      const [left, right] = [read(head), read(tail)];
      return [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
    };
    let valid = 0;
    for (let n = 0; n < 100_000; n++) {
      const text = n % 8 === 0
        ? Array.from({ length: random(46) }, () => alphabet[random(alphabet.length)]).join("")
        : candidate();
      const expected = isIP(text) === 6;
      const groups = ipv6Groups(text);
      assert.equal(groups !== null, expected, JSON.stringify(text));
      if (groups) {
        valid++;
        assert.deepEqual(groups, groupsOfUrl(new URL(`http://[${text}]/`).hostname), text);
      }
    }
    assert.ok(valid > 10_000, `only ${valid} valid addresses among the cases`);
  });
});

describe("parseCidr and isInAny", () => {
  test("addresses and blocks", () => {
    const blocks = [
      "127.0.0.0/8",
      "::1",
      "203.0.113.0/25",
      "2001:db8:a::/48",
      "::ffff:198.51.100.0/120",
    ]
      .map((text) => parseCidr(text)!);
    assert.ok(blocks.every(Boolean));
    assert.ok(isInAny("127.1.2.3", blocks));
    assert.ok(isInAny("::1", blocks));
    assert.ok(isInAny("203.0.113.127", blocks));
    assert.ok(!isInAny("203.0.113.128", blocks));
    assert.ok(isInAny("2001:db8:a:ffff::1", blocks));
    assert.ok(!isInAny("2001:db8:b::1", blocks));
    assert.ok(isInAny("198.51.100.200", blocks), "a mapped block is an IPv4 block");
    assert.ok(!isInAny("198.51.101.1", blocks));
  });
  test("an IPv6 zone is ignored: the address alone is meant", () => {
    assert.deepEqual(parseCidr("fe80::1%eth0"), parseCidr("fe80::1"));
    assert.deepEqual(parseCidr("fe80::%eth0/64"), parseCidr("fe80::/64"));
    assert.equal(parseCidr("1.2.3.4%eth0"), null, "IPv4 has no zone");
  });
  test("isInAny agrees with a BigInt prefix comparison on 20,000 generated cases", () => {
    const random = seeded(17);
    const randomBits = (width: number) => {
      let bits = 0n;
      for (let i = 0; i < width; i += 16) bits = (bits << 16n) | BigInt(random(0x10000));
      return bits & ((1n << BigInt(width)) - 1n);
    };
    const text = (bits: bigint, width: number) =>
      width === 32
        ? [24n, 16n, 8n, 0n].map((shift) => (bits >> shift) & 255n).join(".")
        : [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n].map((shift) =>
          ((bits >> shift) & 0xffffn).toString(16)
        )
          .join(":");
    for (let n = 0; n < 20_000; n++) {
      const width = random(2) ? 32 : 128;
      // A first IPv6 group of 0x2000 or more keeps clear of IPv4-mapped blocks.
      const block = width === 32 ? randomBits(32) : (randomBits(128) | (0x2000n << 112n));
      const prefix = random(width + 1);
      const same = random(width + 1); // bits kept from the block's address; the rest at random
      const keep = same === 0 ? 0n : ((1n << BigInt(same)) - 1n) << BigInt(width - same);
      const address = (block & keep) | (randomBits(width) & ~keep & ((1n << BigInt(width)) - 1n));
      const shift = BigInt(width - prefix);
      const expected = block >> shift === address >> shift;
      const cidr = parseCidr(`${text(block, width)}/${prefix}`);
      assert.ok(cidr, text(block, width));
      assert.equal(
        isInAny(text(address, width), [cidr]),
        expected,
        `${text(address, width)} in ${text(block, width)}/${prefix}`,
      );
    }
  });
  test("/0 matches everything of its family only", () => {
    const all4 = [parseCidr("0.0.0.0/0")!];
    assert.ok(isInAny("203.0.113.1", all4));
    assert.ok(!isInAny("2001:db8::1", all4));
  });
  for (
    const bad of [
      "",
      "1.2.3.4/33",
      "2001:db8::/129",
      "1.2.3.4/",
      "1.2.3.4/x",
      "host",
      "1.2.3.4/-1",
      "::ffff:1.2.3.4/64",
    ]
  ) {
    test(`rejects ${JSON.stringify(bad)}`, () => assert.equal(parseCidr(bad), null));
  }
});

describe("a line is read on its own: the lines around it in the chunk change nothing", () => {
  // Each case is scanned between two copies of a line that no family reads but that holds what a
  // reading past the end (or before the start) of the case's line would pick up.
  const neighbours = [
    "",
    "\r",
    "5060' - Wrong password",
    "' - Wrong password",
    "0.0.1:5060' (callid: x) - No matching endpoint found after 5 tries in 1.000 ms",
    "' (callid: x) - Failed to authenticate",
    "::1]:5060' - Wrong password",
    "%eth0",
    "7 tries in 1.5 ms",
    " ms",
    'oteAddress="IPV4/UDP/203.0.113.99/5060",ACLName="x"',
    '",SessionID="x",LocalAddress="IPV4/UDP/192.0.2.1/5060",RemoteAddress="IPV4/UDP/203.0.113.98/5060"',
    "' rejected because extension not found in context 'default'.",
    "9.9.9.9' failed for '203.0.113.97' - Wrong password",
  ];
  const cases = [...ours, ...injections, ...corpus];
  test(`${cases.length} cases, each between ${neighbours.length} kinds of neighbour`, () => {
    for (const neighbour of neighbours) {
      assert.equal(
        parseLine(neighbour),
        null,
        `the neighbour ${JSON.stringify(neighbour)} is read`,
      );
    }
    for (const c of cases) {
      const alone = scanString(c.text + "\n");
      for (const neighbour of neighbours) {
        const text = `${neighbour}\n${c.text}\n${neighbour}\n`;
        const between = scanString(text);
        assert.deepEqual(
          [...between.counts],
          [...alone.counts],
          `${c.source} line ${c.line} between ${JSON.stringify(neighbour)}`,
        );
        assert.equal(between.ambiguous, alone.ambiguous);
        assert.equal(between.openHeads, alone.openHeads);
      }
    }
  });
  test("and so is each case cut short, where a reading past its end would find the rest", () => {
    const random = seeded(11);
    let checked = 0;
    for (const c of cases) {
      // Cut before each quote, colon, bracket, slash or space in the last 120 characters, and at
      // a few places besides.
      const cuts = new Set<number>();
      for (let i = Math.max(1, c.text.length - 120); i < c.text.length; i++) {
        if ("':[]/ ".includes(c.text[i])) cuts.add(i);
      }
      for (let k = 0; k < 8; k++) cuts.add(1 + random(c.text.length - 1));
      for (const cut of cuts) {
        const line = c.text.slice(0, cut);
        const alone = scanString(line + "\n");
        for (const neighbour of [c.text.slice(cut), ...neighbours.slice(2, 6)]) {
          if (parseLine(neighbour) !== null) continue;
          const between = scanString(`${neighbour}\n${line}\n${neighbour}\n`);
          assert.deepEqual(
            [...between.counts],
            [...alone.counts],
            `${c.source} line ${c.line} cut at ${cut}, between ${JSON.stringify(neighbour)}`,
          );
          checked++;
        }
      }
    }
    assert.ok(checked > 10_000, `${checked} cut lines checked`);
  });
});
