#!/usr/bin/env -S deno run --no-prompt --allow-read=/var/log/asterisk,/run/sipcheck.lock --allow-write=/run/sipcheck.lock --allow-run=/usr/sbin/iptables,/usr/sbin/ip6tables,/usr/sbin/iptables-restore,/usr/sbin/ip6tables-restore,/bin/kill --allow-sys=uid,networkInterfaces
/**
 * sipcheck: ban the addresses that keep failing to log in to an Asterisk PBX.
 *
 * A TypeScript port of sipcheck.pl (Sinologic, 2010). Run from cron, it reads Asterisk's log,
 * counts failed registrations, calls and logins per source address, and once an address reaches
 * {@link THRESHOLD} failures adds an iptables (or ip6tables) rule that drops its packets to the
 * PBX's service ports. `sipcheck clear` removes every rule sipcheck added, and nothing else.
 *
 * It understands every failure message Asterisk 1.4 to 23 writes (chan_sip, PJSIP, IAX2, AMI,
 * the security log and FreePBX's dialplan warning), in every log format (file, `[plain]`,
 * syslog, journal, JSON), for IPv4 and IPv6, and it reads the address only from the part of a
 * line that Asterisk writes itself, so a caller cannot make it ban somebody else.
 *
 * Usage:
 * ```
 * sipcheck.ts [options] [LOG ...]   scan LOGs, ban every address with >= THRESHOLD failures
 * sipcheck.ts clear                  remove every rule sipcheck added, and nothing else
 * sipcheck.ts list                   print the addresses sipcheck bans now
 *
 * deno run <flags of the first line> sipcheck.ts ...     or     node sipcheck.ts ...
 * ```
 * LOG defaults to /var/log/asterisk/messages (messages.log on Asterisk 19+); a bare name is
 * looked up in /var/log/asterisk; `-` reads standard input. Options: -n/--dry-run,
 * -t/--threshold N, -i/--ignore ADDR|CIDR, --json, -q/--quiet, -h/--help, -V/--version.
 *
 * Exit codes (sysexits.h): 0 done; 64 usage error; 66 a log could not be read (the others were
 * still scanned and acted on); 69 firewall command missing or failed; 75 another sipcheck run
 * holds the lock; 77 not root where root is needed; 1 anything unexpected.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  openSync,
  readFileSync,
  readSync,
  unlinkSync,
  writeSync,
} from "node:fs";
import { isIP } from "node:net";
import { networkInterfaces } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { parseArgs } from "node:util";

// ---------------------------------------------------------------------------------------------
// Constants a person may want to edit
// ---------------------------------------------------------------------------------------------

/** Failures at which an address is banned (sipcheck.pl used 200). `-t` overrides it per run. */
export const THRESHOLD = 200;

/** Where Asterisk writes its logs, and the log read when none is named. */
export const LOG_DIR = "/var/log/asterisk";
/** Default log names, in order: `messages` up to Asterisk 18, `messages.log` from 19. */
export const DEFAULT_LOGS = ["messages", "messages.log"] as const;

/** Never banned: loopback. The host's own addresses are added at run time; `-i` adds more. */
export const IGNORE = ["127.0.0.0/8", "::1"] as const;

/** Our own chain in the filter table of iptables and ip6tables. */
export const CHAIN = "sipcheck";
/**
 * Ports whose packets are checked against our chain, for udp and tcp: SIP 5060 and SIP-TLS 5061,
 * IAX2 4569, AMI 5038 (every service whose failures we count). PJSIP WebSocket transports
 * (8088/8089) are not in the list; add them if you expose them.
 */
export const PORTS = [5060, 5061, 4569, 5038] as const;

/** Firewall binaries, by absolute path: cron's PATH often lacks /usr/sbin. */
export const IPTABLES = {
  4: { list: "/usr/sbin/iptables", restore: "/usr/sbin/iptables-restore" },
  6: { list: "/usr/sbin/ip6tables", restore: "/usr/sbin/ip6tables-restore" },
} as const;
/** Used to tell whether the process holding the lock still runs (Deno has no signal 0 without it). */
export const KILL = "/bin/kill";
/** One sipcheck at a time: created exclusively, holds the pid of the run that owns it. */
export const LOCK_PATH = "/run/sipcheck.lock";

/** Physical lines longer than this are ignored: Asterisk truncates a record at 8192 bytes. */
export const MAX_LINE = 8000;
/** After an open head (a record cut by a line feed the caller sent), lines starting this many
 * bytes later cannot belong to the same record; lines before that may be forged. */
export const OPEN_HEAD_WINDOW = 8192;
/**
 * The most one PJSIP `after N tries` line can add. Asterisk's unidentified_request_count is 5 by
 * default, so a real window starts at N = 5 and goes up by one per line; the cap stops a forged
 * line from claiming thousands of requests at once.
 */
export const TRIES_STEP_MAX = 5;
/**
 * chan_sip writes SecurityEvents with RemoteAddress taken from the Via header's maddr= when
 * present, so a caller can choose the address in them. They are still the only record of
 * chan_sip INVITE password guessing, and fail2ban counts them too; we count them, deliberately.
 * Set this to false on a PBX whose trunks and offices are not all in the ignore list.
 */
export const COUNT_CHAN_SIP_SECURITY_EVENTS = true;

/** This program's version. */
export const VERSION = "1.0.0";

/** Exit codes (sysexits.h). */
export const EXIT = {
  ok: 0,
  unexpected: 1,
  usage: 64,
  noInput: 66,
  unavailable: 69,
  tempFail: 75,
  noPermission: 77,
} as const;

/** Bytes read from a log at a time. */
const CHUNK_SIZE = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/** The message families sipcheck counts; the README has a table with versions and examples. */
export type FamilyName =
  | "sip-register"
  | "sip-call"
  | "sip-hacking-attempt"
  | "pjsip-request"
  | "pjsip-call"
  | "iax2-auth"
  | "iax2-md5"
  | "iax2-plaintext"
  | "iax2-denied"
  | "iax2-noreg"
  | "iax2-rejected"
  | "ami-auth"
  | "security-event"
  | "dialplan-unknown-sip";

/** What a failure line says once its family is known. */
export interface Failure {
  /** The family whose pattern matched. */
  family: FamilyName;
  /** Normalised source address, or null when the line holds none that can be trusted. */
  address: string | null;
  /** PJSIP's `after N tries`: requests so far from this address in the current window. */
  tries?: number;
  /** The caller's field runs to the end of the line without the family's fixed tail: the record
   * was cut by a line feed in that field, and the next lines may be forged. */
  openHead?: boolean;
  /** A SecurityEvent whose possible addresses disagree: nothing is counted. */
  ambiguous?: boolean;
}

/** Failures per address, and what the scan saw along the way. */
export interface Tally {
  /** Failures per normalised address, in first-seen order. */
  counts: Map<string, number>;
  /** Last `after N tries` value per address. */
  lastTries: Map<string, number>;
  /** Physical lines read. */
  lines: number;
  /** Failures counted (the sum of `counts`). */
  failures: number;
  /** Lines over {@link MAX_LINE} bytes, ignored. */
  longLines: number;
  /** Open heads seen (records cut by a caller's line feed). */
  openHeads: number;
  /** Failure lines not counted because they follow an open head too closely. */
  suppressed: number;
  /** SecurityEvents not counted because their address was ambiguous. */
  ambiguous: number;
}

/** What sipcheck does about one address. */
export type Action = "banned" | "would-ban" | "already-banned" | "ignored" | "below-threshold";

/** An address at or over the threshold, and what happens to it. */
export interface Decision {
  ip: string;
  failures: number;
  action: Action;
}

/** An address block: `a.b.c.d/n` or `v6/n`. */
export interface Cidr {
  version: 4 | 6;
  bits: bigint;
  prefix: number;
}

/** IP version. */
export type IpVersion = 4 | 6;

/** What our part of one family's firewall looks like now. */
export interface ChainState {
  /** Our chain exists. */
  exists: boolean;
  /** Addresses our chain drops. */
  bans: Set<string>;
  /** Rules anywhere that jump to our chain, as `iptables -S` prints them. */
  jumps: string[];
}

/** Result of running a program. */
export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program by absolute path with an argv array (never a shell), optionally feeding stdin. */
export type Runner = (
  binary: string,
  args: readonly string[],
  input?: string,
) => Promise<RunResult>;

/** What `main` needs from the outside world; tests pass fakes. */
export interface Deps {
  stdout: (text: string) => void | Promise<void>;
  stderr: (text: string) => void;
  run: Runner;
  uid: () => number;
  lockPath: string;
  hostAddresses: () => string[];
  stdin: () => AsyncIterable<Uint8Array>;
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

/**
 * How a family prints its address:
 * - `bare`: `a.b.c.d` or an unbracketed IPv6 address (ast_sockaddr_stringify_addr,
 *   ast_inet_ntoa, security events);
 * - `sockaddr`: `a.b.c.d` (ast_inet_ntoa, before 1.8), `a.b.c.d:port` and `[v6]:port`
 *   (ast_sockaddr_stringify, 1.8+);
 * - `srcname`: `a.b.c.d:port`, `[v6]:port`, or PJSIP's old `v6:port` with no brackets, whose last
 *   group is the port.
 */
export type AddressForm = "bare" | "sockaddr" | "srcname";

/** True if `text` from `from` on is `:` and one to five digits. */
function isPortSuffix(text: string, from: number): boolean {
  const digits = text.length - from - 1;
  if (digits < 1 || digits > 5 || text.charCodeAt(from) !== 58 /* : */) return false;
  for (let i = from + 1; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

/**
 * Reads an address printed by Asterisk and returns it normalised (IPv4 dotted, IPv6 compressed
 * lower case, `::ffff:a.b.c.d` as `a.b.c.d`, no zone, no port), or null if it is not an IP
 * address in the given form (a host name, `(null)`, garbage).
 */
export function normaliseAddress(text: string, form: AddressForm): string | null {
  let host = text;
  if (text.charCodeAt(0) === 91 /* [ */) {
    const close = text.indexOf("]");
    if (form === "bare" || close < 0 || !isPortSuffix(text, close + 1)) return null;
    host = text.slice(1, close);
  } else {
    const firstColon = text.indexOf(":");
    const lastColon = text.lastIndexOf(":");
    if (firstColon !== -1 && firstColon === lastColon) {
      // a.b.c.d:port
      if (form === "bare" || !isPortSuffix(text, lastColon)) return null;
      host = text.slice(0, lastColon);
      return isIP(host) === 4 ? host : null;
    }
    if (firstColon === -1) {
      if (form === "srcname") return null;
      return isIP(text) === 4 ? text : null;
    }
    if (form === "sockaddr") return null; // it brackets IPv6 (and always adds the port)
    if (form === "srcname") {
      if (!isPortSuffix(text, lastColon)) return null;
      host = text.slice(0, lastColon);
    }
  }
  const zone = host.indexOf("%");
  if (zone !== -1) host = host.slice(0, zone);
  return isIP(host) === 6 ? canonicalIPv6(host) : null;
}

/** The eight 16-bit groups of a valid IPv6 address (checked with `isIP` first). */
function ipv6Groups(text: string): number[] {
  const toGroups = (part: string): number[] => {
    if (part === "") return [];
    const groups: number[] = [];
    for (const piece of part.split(":")) {
      if (piece.includes(".")) {
        const [a, b, c, d] = piece.split(".").map(Number);
        groups.push((a << 8) | b, (c << 8) | d);
      } else groups.push(parseInt(piece, 16));
    }
    return groups;
  };
  const gap = text.indexOf("::");
  if (gap === -1) return toGroups(text);
  const head = toGroups(text.slice(0, gap));
  const tail = toGroups(text.slice(gap + 2));
  return [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
}

/**
 * RFC 5952 text of a valid IPv6 address: lower case, no leading zeros, the longest run of two or
 * more zero groups as `::`. IPv4-mapped addresses come back as plain IPv4.
 */
export function canonicalIPv6(text: string): string {
  const g = ipv6Groups(text);
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `${g[6] >> 8}.${g[6] & 255}.${g[7] >> 8}.${g[7] & 255}`;
  }
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
    i = j;
  }
  const hex = g.map((group) => group.toString(16));
  if (bestStart === -1) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

/** The address as a number, for prefix comparisons. */
function addressBits(address: string, version: IpVersion): bigint {
  if (version === 4) {
    return address.split(".").reduce((bits, octet) => (bits << 8n) | BigInt(octet), 0n);
  }
  return ipv6Groups(address).reduce((bits, group) => (bits << 16n) | BigInt(group), 0n);
}

/** Parses `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6); null when malformed. */
export function parseCidr(text: string): Cidr | null {
  const slash = text.indexOf("/");
  const address = slash === -1 ? text : text.slice(0, slash);
  const version = isIP(address);
  if (version !== 4 && version !== 6) return null;
  const width = version === 4 ? 32 : 128;
  let prefix = width;
  if (slash !== -1) {
    const digits = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(digits) || Number(digits) > width) return null;
    prefix = Number(digits);
  }
  const normal = version === 4 ? address : canonicalIPv6(address);
  const normalVersion = isIP(normal) as IpVersion;
  if (normalVersion === 4 && version === 6) {
    // ::ffff:a.b.c.d/n is an IPv4 block
    if (prefix < 96) return null;
    prefix -= 96;
  }
  return { version: normalVersion, bits: addressBits(normal, normalVersion), prefix };
}

/** True when the normalised address lies in one of the blocks. */
export function isInAny(address: string, blocks: readonly Cidr[]): boolean {
  const version = isIP(address) as IpVersion;
  if (version !== 4 && version !== 6) return false;
  const width = version === 4 ? 32 : 128;
  const bits = addressBits(address, version);
  return blocks.some((block) => {
    if (block.version !== version) return false;
    const shift = BigInt(width - block.prefix);
    return bits >> shift === block.bits >> shift;
  });
}

// ---------------------------------------------------------------------------------------------
// Line prefixes (main/logger.c)
// ---------------------------------------------------------------------------------------------

/** Where a record's prefix says it comes from, and where its message starts. */
interface Prefix {
  level: string;
  /** `__FILE__` of the writer, or `Ext.` for dialplan Log() lines. */
  file: string;
  /** Index of the message body. For `Ext.` lines, of the text after `Ext. `. */
  body: number;
}

function isUpper(c: number): boolean {
  return c >= 65 && c <= 90;
}
function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}
function isLowerHex(c: number): boolean {
  return isDigit(c) || (c >= 97 && c <= 102);
}
/** `[\w./-]`: the characters of a source file name. */
function isFileNameChar(c: number): boolean {
  return isDigit(c) || isUpper(c) || (c >= 97 && c <= 122) || c === 95 || c === 46 || c === 47 ||
    c === 45;
}

/**
 * File channels, default formatter, 1.4 – master: `[date] LEVEL[tid][C-xxxxxxxx] file.c: `, that
 * is `/^\[[^\]]*\] [A-Z][A-Z0-9_]* ?\[\d+\](?:\[C-[0-9a-f]{8}\])? (?:[\w./-]+\.c: |Ext\. )/`,
 * read by hand because every candidate line goes through it. Dialplan Log() lines name the file
 * `Ext. <exten>`; their body is taken from after `Ext. `.
 */
function readFilePrefix(line: string): Prefix | null {
  if (line.charCodeAt(0) !== 91 /* [ */) return null;
  const dateEnd = line.indexOf("]");
  if (dateEnd === -1 || line.charCodeAt(dateEnd + 1) !== 32) return null;
  let p = dateEnd + 2;
  const levelStart = p;
  if (!isUpper(line.charCodeAt(p))) return null;
  for (
    let c = line.charCodeAt(++p);
    isUpper(c) || isDigit(c) || c === 95;
    c = line.charCodeAt(++p)
  );
  const level = line.slice(levelStart, p);
  if (line.charCodeAt(p) === 32) p++;
  if (line.charCodeAt(p) !== 91 || !isDigit(line.charCodeAt(p + 1))) return null;
  for (p += 2; isDigit(line.charCodeAt(p)); p++);
  if (line.charCodeAt(p++) !== 93 /* ] */) return null;
  if (line.startsWith("[C-", p)) {
    for (let i = p + 3; i < p + 11; i++) if (!isLowerHex(line.charCodeAt(i))) return null;
    if (line.charCodeAt(p + 11) !== 93) return null;
    p += 12;
  }
  if (line.charCodeAt(p++) !== 32) return null;
  if (line.startsWith("Ext. ", p)) return { level, file: "Ext.", body: p + 5 };
  const fileStart = p;
  while (isFileNameChar(line.charCodeAt(p))) p++;
  if (p - fileStart < 3 || !line.startsWith(".c: ", p - 2)) return null;
  return { level, file: line.slice(fileStart, p), body: p + 2 };
}

/**
 * Console and `[plain]` (16.14+): `[date] LEVEL[tid]: file.c:line function: `; syslog (1.6+):
 * `<syslog header> asterisk[pid]: LEVEL[tid]: file.c:line in function: `; the journal's copy of
 * the console (`<syslog header> asterisk[pid]: [date] LEVEL…`) and its bare message
 * (`journalctl -o cat`). The syslog day may have one or two spaces or a leading zero.
 */
const LOCATED_PREFIX = new RegExp(
  "^(?:(?:[A-Z][a-z]{2} {1,2}\\d{1,2} \\d\\d:\\d\\d:\\d\\d|" +
    "\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(?:\\.\\d+)?(?:Z|[+-]\\d\\d:?\\d\\d))" +
    " [^ \\n]+ asterisk\\[\\d+\\]: )?" +
    "(?:\\[[^\\]\\n]*\\] )?([A-Z][A-Z0-9_]*) ?\\[\\d+\\](?:\\[C-[0-9a-f]{8}\\])?: " +
    "(?:([\\w./-]+\\.c):\\d+ (?:in )?\\w+: |Ext\\. )",
);

/** Reads any of the prefixes above. */
function readPrefix(line: string): Prefix | null {
  const prefix = readFilePrefix(line);
  if (prefix) return prefix;
  const located = LOCATED_PREFIX.exec(line);
  return located && { level: located[1], file: located[2] ?? "Ext.", body: located[0].length };
}

/** ANSI colour codes (SGR), present only in console output copied to the journal. */
// deno-lint-ignore no-control-regex
const SGR = /\x1b\[[0-9;]*m/g;

/** Control characters inside a JSON message: escaped by the JSON channel, so never a new line. */
const JSON_LINE_BREAKS = /[\r\n]/g;

// ---------------------------------------------------------------------------------------------
// Asterisk message families: one anchored pattern each, on the side Asterisk writes
// ---------------------------------------------------------------------------------------------

/** An address as Asterisk prints it without a port (IPv6 unbracketed, optional zone). */
const BARE = "[0-9A-Fa-f.:]+(?:%[\\w.-]+)?";

/** chan_sip registration reasons (handle_request_register), 1.2's older wordings included. */
const SIP_REGISTER_REASONS = [
  "Wrong password",
  "Username/auth name mismatch",
  "No matching peer found",
  "Not a local domain",
  "Not a local SIP domain",
  "Peer is not supposed to register",
  "Device does not match ACL",
  "ACL error (permit/deny)",
  "Device not configured to use this transport type",
  "RTP initialization failed",
  "Unknown failure",
  "Unknown error",
] as const;

/**
 * channels/chan_sip.c handle_request_register(), 1.2 – 20.x:
 * `"Registration from '%s' failed for '%s' - %s\n"`. The To header (the caller's) comes first, so
 * the pattern is anchored on the right: the address is the last quoted field before a fixed
 * reason. Read by hand with the same meaning, as it is the commonest line under attack:
 * `/^Registration from '.*' failed for '([^']*)' - (?:REASON|…)$/s`.
 */
function readSipRegister(body: string): string | null {
  if (!body.startsWith("Registration from '")) return null;
  for (const reason of SIP_REGISTER_REASONS) {
    if (!body.endsWith(reason)) continue;
    const addressEnd = body.length - reason.length - 4; // before "' - "
    if (!body.startsWith("' - ", addressEnd)) return null;
    const addressStart = body.lastIndexOf("'", addressEnd - 1) + 1;
    if (addressStart - 14 < 19 || !body.startsWith("' failed for '", addressStart - 14)) {
      return null;
    }
    return body.slice(addressStart, addressEnd);
  }
  return null;
}

/**
 * channels/chan_sip.c handle_request_invite(), 1.8.5 – 20.x: `"Call from '%s' (%s) to extension
 * '%s' rejected because extension not found in context '%s'.\n"`. The extension is the caller's
 * (percent-decoded, so it may hold a line feed); the address comes before it.
 */
const SIP_CALL = /^Call from '[^']*' \(([^()' ]+)\) to extension '/;
/** The same message before 1.8.5, without an address: only its open heads matter. */
const SIP_CALL_NO_ADDRESS = /^Call from '[^']*' to extension '/;
/** The fixed end of both call messages (chan_sip and res_pjsip_session). */
const CALL_TAIL = /' rejected because extension not found(?: in context '[^']*')?\.$/;

/**
 * Not in any Asterisk release: a patched chan_sip.c (fail2ban issue #1000, 2015) writes
 * `hacking attempt detected '<ip>'`, and fail2ban matches it.
 */
const SIP_HACKING_ATTEMPT = new RegExp(`^hacking attempt detected '(${BARE})'$`);

/**
 * res/res_pjsip_session.c new_invite(), S1 (12.0 – 16.0, address `src_name:port`) and S2 (13.24+,
 * 15.7+, 16.1 – 18.0, `[v6]:port`): `"Call from '%s' (%s:%s) to extension '%s' rejected because
 * extension not found in context '%s'.\n"`.
 */
const PJSIP_CALL = /^Call from '[^']*' \([A-Z0-9-]+:([^()' ]+)\) to extension '/;
/** S3 (16.15+, 17.9+, 18.1+ – master), through ast_trace_log, so the body starts with a space:
 * `" %s: Call (%s:%s) to extension '%s' rejected because extension not found in context '%s'.\n"` */
const PJSIP_CALL_TRACE = /^ ?[^ ]+: Call \([A-Z0-9-]+:([^()' ]+)\) to extension '/;

/** res/res_pjsip/pjsip_distributor.c: the method token of `Request '%s' from …` (may hold `'`). */
const PJSIP_METHOD = /^[A-Za-z0-9\-.!%*_+`'~]+$/;
/** The fixed end of the same line when an endpoint uses identify_by=auth_username (13.10+). */
const PJSIP_TRIES = / after (\d+) tries in \d+\.\d+ ms$/;

/** channels/chan_iax2.c, 1.4 – master: `"Host %s failed to authenticate as %s\n"` (≤ 11 bare,
 * 12+ with port). The user name runs to the end of the line. */
const IAX2_AUTH = /^Host ([^ ]+) failed to authenticate as /;
/** chan_iax2.c: `"Host %s failed MD5 authentication for '%s' (%s != %s)\n"` (REGREQ). */
const IAX2_MD5 = new RegExp(`^Host (${BARE}) failed MD5 authentication for '`);
const IAX2_MD5_TAIL = /^[^']*' \(.* != .*\)$/s;
/** chan_iax2.c: `"Host %s did not provide proper plaintext password for '%s'\n"`. */
const IAX2_PLAINTEXT = new RegExp(
  `^Host (${BARE}) did not provide proper plaintext password for '`,
);
/** chan_iax2.c: `"Host %s denied access to register peer '%s'\n"` (peer ACL). */
const IAX2_DENIED = new RegExp(`^Host (${BARE}) denied access to register peer '`);
/** The end of the two messages above: a configured peer name in quotes. */
const QUOTED_NAME_TAIL = /^[^']*'$/;
/** chan_iax2.c: `"No registration for peer '%s' (from %s)\n"`: the caller's peer name comes
 * first, so it is anchored on the right. */
const IAX2_NOREG = new RegExp(`^No registration for peer '.*' \\(from (${BARE})\\)$`, "s");
const IAX2_NOREG_HEAD = /^No registration for peer '/;
/** chan_iax2.c: `"Rejected connect attempt from %s, who was trying to reach '%s@%s'\n"` and
 * `"… from %s, request '%s@%s' does not exist\n"`. */
const IAX2_REJECTED =
  /^Rejected connect attempt from ([^ ,]+), (who was trying to reach|request) '/;
const IAX2_REJECTED_TAIL = {
  "who was trying to reach": /'$/,
  request: /' does not exist$/,
} as const;

/**
 * main/manager.c authenticate(): `"%s failed to authenticate as '%s'\n"`,
 * `"%s tried to authenticate with nonexistent user '%s'\n"` (1.4 – master) and
 * `"%s failed to pass IP ACL as '%s'\n"` (1.6 – master). The address comes first; the user name
 * cannot hold a line feed.
 */
const AMI_AUTH = new RegExp(
  `^(${BARE}) (?:failed to authenticate as|tried to authenticate with nonexistent user|failed to pass IP ACL as) '`,
);

/**
 * res/res_security_log.c (1.8 – master): the fixed head of the four events that mean a failed
 * login. `EventTV` is `sec-usec` in 1.8/11 and ISO 8601 from 12.
 */
const SECURITY_HEAD =
  /^SecurityEvent="(FailedACL|InvalidAccountID|ChallengeResponseFailed|InvalidPassword)",EventTV="(?:\d+-\d+|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d{4})",Severity="(?:Error|Informational)",Service="(\w+)",EventVersion="\d+",AccountID="/;
/** A `LocalAddress`/`RemoteAddress` pair: `IPV4/UDP/a.b.c.d/port`, transport optional. */
const SECURITY_ADDRESS_PAIR = new RegExp(
  `",LocalAddress="IPV[46]/(?:[A-Z]{2,4}/)?${BARE}/\\d+",RemoteAddress="IPV[46]/(?:[A-Z]{2,4}/)?(${BARE})/\\d+"`,
  "g",
);
const SECURITY_TV = "(?:\\d+-\\d+|\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d+[+-]\\d{4})";
const MODULE = '(?:,Module="[\\w.-]*")?';
const SESSION_TV = `(?:,SessionTV="${SECURITY_TV}")?`;
/** What may follow RemoteAddress in each event, to the end of the line (main/security_events.c):
 * server-written values strictly, the caller's (Challenge, Response, …) as anything. */
const SECURITY_TAILS: Record<string, RegExp> = {
  FailedACL: new RegExp(`^${MODULE}(?:,ACLName="([\\w.-]*)")?${SESSION_TV}$`),
  InvalidAccountID: new RegExp(`^${MODULE}${SESSION_TV}$`),
  ChallengeResponseFailed: new RegExp(
    `^,Challenge=".*",Response=".*",ExpectedResponse=".*"${MODULE}${SESSION_TV}$`,
    "s",
  ),
  InvalidPassword: new RegExp(
    `^${MODULE}${SESSION_TV}(?:,Challenge=".*")?(?:,ReceivedChallenge=".*")?(?:,ReceivedHash=".*")?$`,
    "s",
  ),
};

/**
 * FreePBX's from-sip-external context: `Log(WARNING,"Rejecting unknown SIP connection from
 * ${CHANNEL(recvip)}")`, written with file `Ext. <exten>`. The address is the last thing on the
 * line; the quotes survive on some versions.
 */
const DIALPLAN_UNKNOWN_SIP = new RegExp(
  `(?:^|: )"?Rejecting unknown SIP connection from (${BARE})"?$`,
);

/** One Asterisk message family: the levels that write it, and how to read its body. */
interface Family {
  name: FamilyName;
  /** Levels it is written at; null for any (dialplan Log() picks its own). */
  levels: readonly string[] | null;
  /** Reads a message body; null when the body is not this family's. */
  read: (body: string) => Failure | null;
}

/** A failure; the optional fields only when set, so that results compare simply in tests. */
function failure(
  family: FamilyName,
  address: string | null,
  openHead = false,
  tries?: number,
): Failure {
  const result: Failure = { family, address };
  if (openHead) result.openHead = true;
  if (tries !== undefined) result.tries = tries;
  return result;
}

/** Reads a family whose address follows a fixed head; `tail` is the fixed end of the record. */
function readHead(
  family: FamilyName,
  body: string,
  head: RegExp,
  form: AddressForm,
  tail: RegExp | null,
): Failure | null {
  const match = head.exec(body);
  if (!match) return null;
  const openHead = tail !== null && !tail.test(body.slice(match[0].length));
  return failure(family, normaliseAddress(match[1], form), openHead);
}

/** A family whose address follows a fixed head. */
function headFamily(
  name: FamilyName,
  levels: readonly string[],
  head: RegExp,
  form: AddressForm,
  tail: RegExp | null,
): Family {
  return { name, levels, read: (body) => readHead(name, body, head, form, tail) };
}

/** A family anchored on the right end of the line; `head` alone marks an open head. */
function tailFamily(
  name: FamilyName,
  levels: readonly string[] | null,
  pattern: RegExp,
  form: AddressForm,
  head: RegExp | null = null,
): Family {
  return {
    name,
    levels,
    read(body) {
      const match = pattern.exec(body);
      if (match) return failure(name, normaliseAddress(match[1], form));
      return head?.test(body) ? failure(name, null, true) : null;
    },
  };
}

const NOTICE = ["NOTICE"] as const;
/** chan_iax2 raised some of its messages to WARNING in 18.21, 20.6, 21.1 and 22. */
const NOTICE_OR_WARNING = ["NOTICE", "WARNING"] as const;

/** chan_sip.c registrations. */
const sipRegister: Family = {
  name: "sip-register",
  levels: NOTICE,
  read(body) {
    const address = readSipRegister(body);
    return address === null ? null : failure("sip-register", normaliseAddress(address, "sockaddr"));
  },
};

/** chan_sip.c calls: with an address from 1.8.5, without before. */
const sipCall: Family = {
  name: "sip-call",
  levels: NOTICE,
  read(body) {
    const reading = readHead("sip-call", body, SIP_CALL, "sockaddr", CALL_TAIL);
    if (reading) return reading;
    const old = SIP_CALL_NO_ADDRESS.exec(body);
    if (!old) return null;
    return failure("sip-call", null, !CALL_TAIL.test(body.slice(old[0].length)));
  },
};

/** res_pjsip_session.c calls, all three generations. */
const pjsipCall: Family = {
  name: "pjsip-call",
  levels: NOTICE,
  read: (body) =>
    readHead("pjsip-call", body, PJSIP_CALL, "srcname", CALL_TAIL) ??
      readHead("pjsip-call", body, PJSIP_CALL_TRACE, "srcname", CALL_TAIL),
};

/**
 * The end of the From field of a PJSIP request line, which starts at `start`, or -1.
 * pjproject prints it as `<uri>` or `"display" <uri>`; the URI never holds a space, `"`, `<` or
 * `>`. A display quoted on the wire keeps its backslash escapes, so its first unescaped `"` ends
 * it; one unquoted on the wire may hold a bare `"` but no `:` or `<`.
 */
function endOfFrom(body: string, start: number): number {
  const first = body.charCodeAt(start);
  if (first === 60 /* < */) return endOfUri(body, start);
  if (first !== 34 /* " */) return -1;
  let i = start + 1;
  while (i < body.length) {
    const c = body.charCodeAt(i);
    if (c === 92 /* \ */) i += 2;
    else if (c === 34) break;
    else i++;
  }
  if (i < body.length && body.startsWith(" <", i + 1)) {
    const end = endOfUri(body, i + 2);
    if (end !== -1 && body.startsWith("' failed for '", end)) return end;
  }
  // An unquoted display: "[^:<]*" <uri>
  const angle = body.indexOf("<", start + 1);
  if (angle < start + 3 || !body.startsWith('" ', angle - 2)) return -1;
  if (body.slice(start + 1, angle - 2).includes(":")) return -1;
  return endOfUri(body, angle);
}

/** `<` + `[^ "<>]*` + `>` at `start`; returns the index after `>`, or -1. */
function endOfUri(body: string, start: number): number {
  if (body.charCodeAt(start) !== 60) return -1;
  for (let i = start + 1; i < body.length; i++) {
    const c = body.charCodeAt(i);
    if (c === 62 /* > */) return i + 1;
    if (c === 32 || c === 34 || c === 60) return -1;
  }
  return -1;
}

/**
 * res/res_pjsip/pjsip_distributor.c, P1 (12.0 – 13.9): `"Request from '%s' failed for '%s:%d'
 * (callid: %s) - No matching endpoint found\n"`; P2 (13.10 – 16.0.x, `src_name:port`) and P3
 * (13.24+, 15.7+, 16.1+ – master, `[v6]:port`): `"Request '%s' from '%s' failed for '%s'
 * (callid: %s) - %s"`, optionally `" after %u tries in %.3f ms"`. The From display name before
 * the address and the Call-ID after it are both the caller's, so neither end is safe: the From
 * field is parsed strictly from the left, and every reason is a failure.
 */
const pjsipRequest: Family = {
  name: "pjsip-request",
  levels: NOTICE,
  read(body) {
    let from: number;
    if (body.startsWith("Request from '")) from = 14;
    else if (body.startsWith("Request '")) {
      const space = body.indexOf(" ", 9);
      if (
        space < 11 || body.charCodeAt(space - 1) !== 39 || !body.startsWith("from '", space + 1)
      ) {
        return null;
      }
      if (!PJSIP_METHOD.test(body.slice(9, space - 1))) return null;
      from = space + 7;
    } else return null;
    const fromEnd = endOfFrom(body, from);
    if (fromEnd === -1 || !body.startsWith("' failed for '", fromEnd)) return null;
    const addressStart = fromEnd + 14;
    const addressEnd = body.indexOf("'", addressStart);
    if (addressEnd === -1 || !body.startsWith("' (callid: ", addressEnd)) return null;
    const address = normaliseAddress(body.slice(addressStart, addressEnd), "srcname");
    const tries = body.endsWith(" ms") ? PJSIP_TRIES.exec(body) : null;
    return failure("pjsip-request", address, false, tries ? Number(tries[1]) : undefined);
  },
};

/**
 * res_security_log.c events. The AccountID and SessionID before the addresses and the
 * challenge values after them can be the caller's, so every `LocalAddress…RemoteAddress` pair is
 * a candidate; one counts only when a SessionID comes before it and the rest of the line is
 * exactly what Asterisk writes after RemoteAddress for that event. All surviving candidates must
 * agree, or the line is ambiguous and counts nothing.
 */
const securityEvent: Family = {
  name: "security-event",
  levels: ["SECURITY"],
  read(body) {
    const head = SECURITY_HEAD.exec(body);
    if (!head) return null;
    const [, event, service] = head;
    if (service === "SIP" && !COUNT_CHAN_SIP_SECURITY_EVENTS) return null;
    const sessionId = body.indexOf('",SessionID="', head[0].length - 1);
    const tailPattern = SECURITY_TAILS[event];
    const addresses = new Set<string | null>();
    let pairs = 0;
    SECURITY_ADDRESS_PAIR.lastIndex = head[0].length;
    for (let pair; (pair = SECURITY_ADDRESS_PAIR.exec(body));) {
      pairs++;
      if (sessionId === -1 || sessionId + 13 > pair.index) continue;
      const tail = tailPattern.exec(body.slice(pair.index + pair[0].length));
      if (!tail) continue;
      if (event === "FailedACL" && tail[1]?.startsWith("registrar_")) return null;
      addresses.add(normaliseAddress(pair[1], "bare"));
    }
    if (addresses.size > 1) return { family: "security-event", address: null, ambiguous: true };
    if (addresses.size === 1) return failure("security-event", [...addresses][0]);
    // No pair at all: an AccountID cut by a line feed (chan_sip) leaves an open head.
    return failure("security-event", null, pairs === 0);
  },
};

/** The families to try, by the source file Asterisk names in the prefix. */
const FAMILIES_BY_FILE: ReadonlyMap<string, readonly Family[]> = new Map<string, Family[]>([
  ["chan_sip.c", [
    sipRegister,
    sipCall,
    tailFamily("sip-hacking-attempt", NOTICE, SIP_HACKING_ATTEMPT, "bare"),
  ]],
  ["res_pjsip/pjsip_distributor.c", [pjsipRequest]],
  ["res_pjsip_session.c", [pjsipCall]],
  ["chan_iax2.c", [
    headFamily("iax2-auth", NOTICE_OR_WARNING, IAX2_AUTH, "sockaddr", null),
    headFamily("iax2-md5", NOTICE_OR_WARNING, IAX2_MD5, "bare", IAX2_MD5_TAIL),
    headFamily("iax2-plaintext", NOTICE_OR_WARNING, IAX2_PLAINTEXT, "bare", QUOTED_NAME_TAIL),
    headFamily("iax2-denied", NOTICE_OR_WARNING, IAX2_DENIED, "bare", QUOTED_NAME_TAIL),
    tailFamily("iax2-noreg", NOTICE_OR_WARNING, IAX2_NOREG, "bare", IAX2_NOREG_HEAD),
    {
      name: "iax2-rejected",
      levels: NOTICE_OR_WARNING,
      read(body) {
        const match = IAX2_REJECTED.exec(body);
        if (!match) return null;
        const tail = IAX2_REJECTED_TAIL[match[2] as keyof typeof IAX2_REJECTED_TAIL];
        const openHead = !tail.test(body.slice(match[0].length));
        return failure("iax2-rejected", normaliseAddress(match[1], "sockaddr"), openHead);
      },
    },
  ]],
  ["manager.c", [headFamily("ami-auth", NOTICE, AMI_AUTH, "bare", null)]],
  ["res_security_log.c", [securityEvent]],
  ["Ext.", [tailFamily("dialplan-unknown-sip", null, DIALPLAN_UNKNOWN_SIP, "bare")]],
]);

/**
 * The first character a message body of each watched file can start with, for the cheap test on
 * the hot path (see {@link mayHoldFailure}); null where anything can come first.
 */
const BODY_STARTS: ReadonlyMap<string, string | null> = new Map([
  ["chan_sip.c", "RCh"],
  ["res_pjsip/pjsip_distributor.c", "R"],
  ["res_pjsip_session.c", null],
  ["chan_iax2.c", "HNR"],
  ["manager.c", "0123456789abcdefABCDEF:"],
  ["res_security_log.c", "S"],
]);

/** Reads the body of a record once its level and source file are known. */
function readBody(level: string, file: string, body: string, fromJson: boolean): Failure | null {
  const families = FAMILIES_BY_FILE.get(file);
  if (!families) return null;
  for (const family of families) {
    if (family.levels && !family.levels.includes(level)) continue;
    const result = family.read(body);
    if (!result) continue;
    // A JSON record is one line whatever it holds: nothing after it can be forged.
    if (fromJson) delete result.openHead;
    return result;
  }
  return null;
}

/** Asterisk's JSON formatter (14.0+): one object per line, `logmsg.message` ends in `\n`. */
function parseJsonLine(line: string): Failure | null {
  let record;
  try {
    record = JSON.parse(line);
  } catch {
    return null;
  }
  const logmsg = record?.logmsg;
  const file = logmsg?.location?.filename;
  const { level, message } = logmsg ?? {};
  if (typeof file !== "string" || typeof level !== "string" || typeof message !== "string") {
    return null;
  }
  const body = (message.endsWith("\n") ? message.slice(0, -1) : message)
    .replace(JSON_LINE_BREAKS, "\ufffd");
  return readBody(level, file.startsWith("Ext. ") ? "Ext." : file, body, true);
}

/**
 * Reads one physical log line (without its line feed) and returns the failure it records, or null
 * when it records none. The line must start with a complete Asterisk prefix; the family is chosen
 * by level and source file; the address is read from the side of the message Asterisk writes.
 */
export function parseLine(line: string): Failure | null {
  if (line.endsWith("\r")) line = line.slice(0, -1);
  if (line.charCodeAt(0) === 123 /* { */) return parseJsonLine(line);
  let prefix = readPrefix(line);
  if (!prefix && line.includes("\x1b")) {
    // Console output copied to the journal keeps its colours; only there are they stripped.
    line = line.replace(SGR, "");
    prefix = readPrefix(line);
  }
  if (!prefix) return null;
  return readBody(prefix.level, prefix.file, line.slice(prefix.body), false);
}
// ---------------------------------------------------------------------------------------------
// Counting
// ---------------------------------------------------------------------------------------------

/** An empty tally. */
export function newTally(): Tally {
  return {
    counts: new Map(),
    lastTries: new Map(),
    lines: 0,
    failures: 0,
    longLines: 0,
    openHeads: 0,
    suppressed: 0,
    ambiguous: 0,
  };
}

/**
 * A copy of a string that does not keep the text it was cut from alive (V8 slices point into
 * their parent, and a tally of a million addresses must not hold a gigabyte of log).
 */
function detach(text: string): string {
  return (" " + text).slice(1);
}

/**
 * Counts one failure. A PJSIP `after N tries` line stands for the requests since the previous
 * such line from that address (N − last, or N when a new window starts), at most
 * {@link TRIES_STEP_MAX}.
 */
export function addFailure(tally: Tally, address: string, tries?: number): void {
  let step = 1;
  if (tries !== undefined) {
    const last = tally.lastTries.get(address) ?? 0;
    step = Math.max(1, Math.min(tries > last ? tries - last : tries, TRIES_STEP_MAX));
  }
  const count = tally.counts.get(address);
  if (count === undefined) address = detach(address);
  tally.counts.set(address, (count ?? 0) + step);
  if (tries !== undefined) tally.lastTries.set(address, tries);
  tally.failures += step;
}

/** Source files whose lines may hold a failure (without `.c`), by the character before `.c`. */
const WATCHED_FILES: Record<number, readonly string[]> = {
  112: ["chan_sip"], // p
  114: ["res_pjsip/pjsip_distributor", "manager"], // r
  110: ["res_pjsip_session"], // n
  50: ["chan_iax2"], // 2
  103: ["res_security_log"], // g
};
/** How far into a line the source file name may be. */
const PREFIX_REACH = 256;

/**
 * The cheap test on the hot path: may this line hold a failure? It must name a watched source
 * file (the first `name.c:` in the line, or `"filename":"…"` in JSON, or `Ext. `), and in the
 * file format its message must start with a character one of that file's families starts with.
 * Lines that pass are parsed in full; the rest, most of a log, are only counted.
 */
function mayHoldFailure(s: string, start: number, end: number): boolean {
  const reach = Math.min(end, start + PREFIX_REACH);
  if (s.charCodeAt(start) === 123 /* { */) {
    const key = s.indexOf('"filename":"', start);
    if (key === -1 || key >= reach) return false;
    const close = s.indexOf('"', key + 12);
    return close !== -1 && close < end &&
      (FAMILIES_BY_FILE.has(s.slice(key + 12, close)) || s.startsWith("Ext. ", key + 12));
  }
  for (
    let dot = s.indexOf(".c", start);
    dot !== -1 && dot < reach;
    dot = s.indexOf(".c", dot + 2)
  ) {
    const next = s.charCodeAt(dot + 2);
    if (next !== 58 /* : */ && next !== 27 /* ESC: journal colours */) continue;
    const names = WATCHED_FILES[s.charCodeAt(dot - 1)];
    if (names === undefined) return false;
    for (const name of names) {
      if (!s.startsWith(name, dot - name.length)) continue;
      if (next === 27 || s.charCodeAt(dot + 3) !== 32) return true; // not the file format
      const starts = BODY_STARTS.get(name + ".c");
      return starts === null || (starts !== undefined && starts.includes(s[dot + 4]));
    }
    return false;
  }
  const ext = s.indexOf("Ext. ", start);
  return ext !== -1 && ext < reach;
}

/** A log reader that counts failures as bytes arrive, in bounded memory. */
export interface Scanner {
  /** Feeds the next bytes of the log. */
  write(bytes: Uint8Array): void;
  /** Reads up to a chunk straight from a file descriptor; returns the bytes read (0 at end). */
  readFrom(fd: number): number;
  /** Ends the log: a last line without a line feed is read too. */
  end(): void;
}

/**
 * Creates a scanner that adds what it reads to `tally`. Lines are split on LF only and decoded
 * as Latin-1 (one character per byte, so no byte sequence can stop a scan); lines over
 * {@link MAX_LINE} bytes are skipped without being held in memory; failure lines that start
 * within {@link OPEN_HEAD_WINDOW} bytes after an open head are not counted unless they name the
 * open head's own address.
 */
export function createScanner(tally: Tally, onFailure?: (failure: Failure) => void): Scanner {
  const buffer = Buffer.allocUnsafe(CHUNK_SIZE + MAX_LINE + 1);
  let used = 0; // bytes in buffer
  let offset = 0; // log offset of buffer[0]
  let skipping = false; // inside a line longer than MAX_LINE
  let suppressUntil = -1; // log offset before which failure lines may be forged
  let suppressFor: string | null = null; // the open head's address, still counted there

  function record(failure: Failure, lineStart: number, lineEnd: number): void {
    if (failure.ambiguous) {
      tally.ambiguous++;
      return;
    }
    if (
      lineStart < suppressUntil && (failure.address === null || failure.address !== suppressFor)
    ) {
      if (failure.address !== null) tally.suppressed++;
      return;
    }
    if (failure.openHead) {
      tally.openHeads++;
      suppressUntil = lineEnd + 1 + OPEN_HEAD_WINDOW;
      suppressFor = failure.address;
    }
    if (failure.address === null) return;
    addFailure(tally, failure.address, failure.tries);
    onFailure?.(failure);
  }

  /** Counts and reads the lines of `s` (one more than its line feeds), from log offset `base`. */
  function scanText(s: string, base: number): void {
    const length = s.length;
    for (let start = 0;;) {
      let end = s.indexOf("\n", start);
      if (end === -1) end = length;
      tally.lines++;
      if (end - start > MAX_LINE) tally.longLines++;
      else if (mayHoldFailure(s, start, end)) {
        const failure = parseLine(s.slice(start, end));
        if (failure) record(failure, base + start, base + end);
      }
      if (end === length) return;
      start = end + 1;
    }
  }

  /** Reads the complete lines in the buffer and keeps the incomplete last one. */
  function drain(final: boolean): void {
    let start = 0;
    if (skipping) {
      const lf = buffer.subarray(0, used).indexOf(10);
      if (lf === -1) {
        offset += used;
        used = 0;
        if (final) {
          skipping = false;
          tally.lines++;
          tally.longLines++;
        }
        return;
      }
      skipping = false;
      tally.lines++;
      tally.longLines++;
      start = lf + 1;
    }
    const lastLf = used > start ? buffer.subarray(start, used).lastIndexOf(10) : -1;
    if (lastLf !== -1) {
      scanText(buffer.toString("latin1", start, start + lastLf), offset + start);
      start += lastLf + 1;
    }
    if (final && used > start) {
      if (used - start > MAX_LINE) {
        tally.lines++;
        tally.longLines++;
      } else scanText(buffer.toString("latin1", start, used), offset + start);
      start = used;
    } else if (used - start > MAX_LINE) {
      skipping = true;
      start = used;
    }
    buffer.copyWithin(0, start, used);
    offset += start;
    used -= start;
  }

  return {
    write(bytes) {
      for (let pos = 0; pos < bytes.length;) {
        const n = Math.min(buffer.length - used, bytes.length - pos);
        buffer.set(bytes.subarray(pos, pos + n), used);
        used += n;
        pos += n;
        if (used === buffer.length) drain(false);
      }
    },
    readFrom(fd) {
      const n = readSync(fd, buffer, used, buffer.length - used, null);
      used += n;
      if (n > 0) drain(false);
      return n;
    },
    end() {
      drain(true);
    },
  };
}

/** Scans a whole string as a log, for tests and small inputs. */
export function scanString(text: string, tally: Tally = newTally()): Tally {
  const scanner = createScanner(tally);
  scanner.write(Buffer.from(text, "latin1"));
  scanner.end();
  return tally;
}

// ---------------------------------------------------------------------------------------------
// Decisions and reports
// ---------------------------------------------------------------------------------------------

/** What `decide` needs to know besides the counts. */
export interface DecideOptions {
  threshold: number;
  ignore: readonly Cidr[];
  banned: ReadonlySet<string>;
  dryRun: boolean;
}

/**
 * The addresses at or over the threshold and what to do with each, highest count first: ignored
 * (loopback, this host, `-i`), already banned, or banned (`would-ban` in a dry run).
 */
export function decide(counts: ReadonlyMap<string, number>, options: DecideOptions): Decision[] {
  const decisions: Decision[] = [];
  for (const [ip, failures] of counts) {
    if (failures < options.threshold) continue;
    const action: Action = isInAny(ip, options.ignore)
      ? "ignored"
      : options.banned.has(ip)
      ? "already-banned"
      : options.dryRun
      ? "would-ban"
      : "banned";
    decisions.push({ ip, failures, action });
  }
  return decisions.sort((a, b) => b.failures - a.failures);
}

/** Addresses in descending order of failures (first seen first among equals). */
function byFailures(counts: ReadonlyMap<string, number>): string[] {
  const ips = [...counts.keys()];
  const failures = Uint32Array.from(counts.values());
  const order = Uint32Array.from(ips.keys()).sort((a, b) => failures[b] - failures[a] || a - b);
  return Array.from(order, (i) => ips[i]);
}

/** Totals printed with the report. */
export interface ScanSummary {
  files: number;
  threshold: number;
  dryRun: boolean;
  errors: string[];
}

const ACTION_WORDS: Record<Action, string> = {
  "banned": "banned",
  "would-ban": "would ban",
  "already-banned": "already banned",
  "ignored": "ignored",
  "below-threshold": "below threshold",
};

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/** The human report: one line per address at or over the threshold, then a summary line. */
export function formatReport(
  decisions: readonly Decision[],
  tally: Tally,
  summary: ScanSummary,
  quiet: boolean,
): string {
  const shown = quiet
    ? decisions.filter((d) => d.action === "banned" || d.action === "would-ban")
    : decisions;
  const width = Math.max(0, ...shown.map((d) => d.ip.length));
  const lines = shown.map((d) =>
    `${ACTION_WORDS[d.action].padEnd(15)} ${d.ip.padEnd(width)}  ${plural(d.failures, "failure")}`
  );
  if (!quiet) {
    const actions = (["banned", "would-ban", "already-banned", "ignored"] as const)
      .map((action) => [action, decisions.filter((d) => d.action === action).length] as const)
      .filter(([, n]) => n > 0)
      .map(([action, n]) => `${n} ${ACTION_WORDS[action]}`);
    const notes = [
      tally.ambiguous ? `${tally.ambiguous} ambiguous` : "",
      tally.suppressed ? `${tally.suppressed} after open heads not counted` : "",
      tally.longLines ? `${plural(tally.longLines, "overlong line")} skipped` : "",
    ].filter(Boolean);
    lines.push(
      `sipcheck: ${plural(summary.files, "file")}, ${plural(tally.lines, "line")}, ` +
        `${plural(tally.failures, "failure")} from ${
          plural(tally.counts.size, "address")
            .replace("addresss", "addresses")
        } (threshold ${summary.threshold}${summary.dryRun ? ", dry run" : ""})` +
        (actions.length ? `: ${actions.join(", ")}` : ": nothing to do") +
        (notes.length ? `; ${notes.join(", ")}` : ""),
    );
  }
  return lines.length ? lines.join("\n") + "\n" : "";
}

/**
 * The `--json` report, in pieces so that a million addresses never sit in one string: one object
 * with the totals and every address with at least one failure, highest count first.
 */
export function* jsonReport(
  decisions: readonly Decision[],
  tally: Tally,
  summary: ScanSummary,
): Generator<string> {
  const actions = new Map(decisions.map((d) => [d.ip, d.action]));
  const head = {
    files: summary.files,
    lines: tally.lines,
    failures: tally.failures,
    threshold: summary.threshold,
    dryRun: summary.dryRun,
    ambiguous: tally.ambiguous,
    suppressed: tally.suppressed,
    openHeads: tally.openHeads,
    longLines: tally.longLines,
    errors: summary.errors,
  };
  yield JSON.stringify(head).slice(0, -1) + ',"addresses":[';
  let piece: string[] = [];
  let first = true;
  for (const ip of byFailures(tally.counts)) {
    const entry = {
      ip,
      failures: tally.counts.get(ip),
      action: actions.get(ip) ?? "below-threshold",
    };
    piece.push((first ? "\n" : ",\n") + JSON.stringify(entry));
    first = false;
    if (piece.length === 10000) {
      yield piece.join("");
      piece = [];
    }
  }
  yield piece.join("") + "\n]}\n";
}

// ---------------------------------------------------------------------------------------------
// Firewall plans (pure): what to send to iptables-restore
// ---------------------------------------------------------------------------------------------

/** The two jump rules from INPUT to our chain, as `iptables -S` prints them. */
export function jumpRules(): string[] {
  return ["udp", "tcp"].map((protocol) =>
    `-A INPUT -p ${protocol} -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`
  );
}

const OUR_JUMP = new RegExp(`^-A INPUT -p (?:udp|tcp) -m multiport --dports [\\d,:]+ -j ${CHAIN}$`);
const BAN_RULE = new RegExp(`^-A ${CHAIN} -s ([0-9a-fA-F.:]+)/(32|128) -j DROP$`);

/** Reads `iptables -S` output: does our chain exist, what does it drop, what jumps to it. */
export function parseListing(listing: string): ChainState {
  const state: ChainState = { exists: false, bans: new Set(), jumps: [] };
  for (const line of listing.split("\n")) {
    if (line === `-N ${CHAIN}`) state.exists = true;
    else if (line.endsWith(` -j ${CHAIN}`) && line.startsWith("-A ")) state.jumps.push(line);
    else {
      const ban = BAN_RULE.exec(line);
      const address = ban && normaliseAddress(ban[1], "bare");
      if (address) state.bans.add(address);
    }
  }
  return state;
}

/** The IP version of a normalised address. */
export function versionOf(address: string): IpVersion {
  return address.includes(":") ? 6 : 4;
}

/**
 * `iptables-restore --noflush` input that adds `addresses` to our chain, creating the chain and
 * the jump rules only if missing (declaring an existing chain would flush it). Only addresses
 * that pass `isIP` get here: the input is a text protocol.
 */
export function banInput(state: ChainState, addresses: readonly string[]): string {
  const lines = ["*filter"];
  if (!state.exists) lines.push(`:${CHAIN} - [0:0]`);
  for (const address of addresses) {
    const version = isIP(address);
    if (version !== 4 && version !== 6) {
      throw new Error(`not an IP address: ${JSON.stringify(address)}`);
    }
    lines.push(`-A ${CHAIN} -s ${address}/${version === 4 ? 32 : 128} -j DROP`);
  }
  for (const jump of jumpRules()) {
    if (!state.jumps.includes(jump)) lines.push(jump.replace("-A INPUT", "-I INPUT 1"));
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/** Input that undoes {@link banInput} for the same state and addresses. */
export function unbanInput(state: ChainState, addresses: readonly string[]): string {
  const lines = ["*filter"];
  for (const jump of jumpRules()) {
    if (!state.jumps.includes(jump)) lines.push(jump.replace("-A ", "-D "));
  }
  if (!state.exists) lines.push(`-F ${CHAIN}`, `-X ${CHAIN}`);
  else {
    for (const address of addresses) {
      lines.push(`-D ${CHAIN} -s ${address}/${isIP(address) === 4 ? 32 : 128} -j DROP`);
    }
  }
  lines.push("COMMIT", "");
  return lines.join("\n");
}

/**
 * Input that removes our jump rules from INPUT and our chain, or null when there is nothing of
 * ours. Rules that jump to our chain from elsewhere are not ours: they make the batch fail, and
 * nothing changes.
 */
export function clearInput(state: ChainState): string | null {
  const jumps = state.jumps.filter((jump) => OUR_JUMP.test(jump));
  if (!state.exists && jumps.length === 0) return null;
  const lines = ["*filter", ...jumps.map((jump) => jump.replace("-A ", "-D "))];
  if (state.exists) lines.push(`-F ${CHAIN}`, `-X ${CHAIN}`);
  lines.push("COMMIT", "");
  return lines.join("\n");
}

// ---------------------------------------------------------------------------------------------
// Edges: processes, files, lock
// ---------------------------------------------------------------------------------------------

/** The Deno global, when running under Deno. */
const deno = (globalThis as { Deno?: typeof Deno }).Deno;

/**
 * Runs a program by absolute path with an argv array, never through a shell. On Deno it uses
 * Deno.Command, which needs only `--allow-run=<path>`; on Node, spawnSync.
 */
export const runProgram: Runner = async (binary, args, input) => {
  if (deno) {
    const child = new deno.Command(binary, {
      args: [...args],
      stdin: input === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    if (input !== undefined) {
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(input));
      await writer.close();
    }
    const output = await child.output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  }
  const result = spawnSync(binary, args, { input, encoding: "utf8", maxBuffer: 256 << 20 });
  if (result.error) throw result.error;
  return { code: result.status ?? 1, stdout: result.stdout, stderr: result.stderr };
};

/** An expected failure, with the exit code and the one line to print. */
export class SipcheckError extends Error {
  code: number;
  constructor(code: number, message: string) {
    super(message);
    this.code = code;
  }
}

/** Short words for the errors people meet when reading files. */
function describeFileError(error: unknown): string {
  const code = (error as { code?: string }).code;
  const name = (error as { name?: string }).name;
  if (code === "ENOENT" || name === "NotFound") return "no such file";
  if (code === "EACCES" || code === "EPERM") return "permission denied";
  if (code === "EISDIR" || name === "IsADirectory") return "is a directory";
  if (name === "NotCapable" || name === "PermissionDenied") {
    return "not allowed by Deno's permissions (add it to --allow-read)";
  }
  return String((error as Error)?.message ?? error).split("\n")[0];
}

/** True if the path exists (false, not an error, when Deno may not look at it). */
function pathExists(path: string): boolean {
  try {
    return existsSync(path);
  } catch {
    return false;
  }
}

/**
 * Where to read a LOG argument: `-` is standard input; a bare name that does not exist here is
 * looked up in {@link LOG_DIR}, so the classic crontab line `sipcheck messages` still works.
 */
export function resolveLog(arg: string, exists: (path: string) => boolean = pathExists): string {
  if (arg === "-" || arg.includes("/") || exists(arg)) return arg;
  return join(LOG_DIR, arg);
}

/** The default log: `messages`, or `messages.log` (Asterisk 19+) when only that exists. */
export function defaultLog(exists: (path: string) => boolean = pathExists): string {
  const [classic, modern] = DEFAULT_LOGS.map((name) => join(LOG_DIR, name));
  return !exists(classic) && exists(modern) ? modern : classic;
}

/** Scans a file through the scanner; throws on open or read errors. */
function scanFile(path: string, scanner: Scanner): void {
  const fd = openSync(path, "r");
  try {
    while (scanner.readFrom(fd) > 0);
    scanner.end();
  } finally {
    closeSync(fd);
  }
}

/** Scans a stream (standard input) through the scanner. */
async function scanStream(stream: AsyncIterable<Uint8Array>, scanner: Scanner): Promise<void> {
  for await (const chunk of stream) scanner.write(chunk);
  scanner.end();
}

/** The addresses of this host's interfaces, normalised. */
function ownAddresses(): string[] {
  const addresses: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const info of list ?? []) {
      const address = normaliseAddress(info.address, "bare");
      if (address) addresses.push(address);
    }
  }
  return addresses;
}

/** True while process `pid` runs (`kill -0`). */
async function isRunning(run: Runner, pid: number): Promise<boolean> {
  try {
    return (await run(KILL, ["-0", String(pid)])).code === 0;
  } catch {
    return true; // cannot tell: assume it runs rather than steal a live lock
  }
}

/**
 * Takes the lock file (exclusive create, holding our pid and mode). A lock whose process is gone
 * is taken over. Throws a SipcheckError(75) when another run holds it.
 */
export async function takeLock(path: string, run: Runner, mode: string): Promise<void> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(path, "wx", 0o644);
      writeSync(fd, `${process.pid} ${mode}\n`);
      closeSync(fd);
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== "EEXIST") {
        throw new SipcheckError(
          EXIT.unexpected,
          `cannot create lock file "${path}": ${describeFileError(error)}`,
        );
      }
    }
    let holder = "";
    try {
      holder = readFileSync(path, "utf8");
    } catch { /* removed meanwhile: try again */ }
    const [pidText, holderMode] = holder.trim().split(" ");
    const pid = Number(pidText);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && await isRunning(run, pid)) {
      throw new SipcheckError(
        EXIT.tempFail,
        holderMode === "watch"
          ? `a sipcheck watcher is active (pid ${pid}, lock ${path}); it bans already`
          : `another sipcheck run holds the lock (pid ${pid}, ${path}); try again later`,
      );
    }
    try {
      unlinkSync(path); // stale: its process is gone
    } catch { /* someone else took it over first */ }
  }
  throw new SipcheckError(EXIT.tempFail, `could not take the lock ${path}; try again later`);
}

/** Removes the lock file if it is ours. */
export function releaseLock(path: string): void {
  try {
    if (readFileSync(path, "utf8").split(" ")[0] === String(process.pid)) unlinkSync(path);
  } catch { /* already gone */ }
}

// ---------------------------------------------------------------------------------------------
// Firewall verbs: one small function each
// ---------------------------------------------------------------------------------------------

/** Runs an iptables binary; a missing binary or a failure becomes SipcheckError(69). */
async function firewall(run: Runner, binary: string, args: string[], input?: string) {
  let result: RunResult;
  try {
    result = await run(binary, args, input);
  } catch (error) {
    const why = describeFileError(error);
    throw new SipcheckError(
      EXIT.unavailable,
      why === "no such file"
        ? `${binary} not found: install iptables (apt-get install iptables)`
        : `cannot run ${binary}: ${why}`,
    );
  }
  if (result.code !== 0) {
    const why = result.stderr.trim().split("\n")[0] || `exit code ${result.code}`;
    throw new SipcheckError(EXIT.unavailable, `${binary} ${args.join(" ")} failed: ${why}`);
  }
  return result;
}

/** Reads our part of one family's filter table (one `iptables -S` call). */
export async function listChain(run: Runner, version: IpVersion): Promise<ChainState> {
  const result = await firewall(run, IPTABLES[version].list, ["-w", "-S"]);
  return parseListing(result.stdout);
}

/** Adds bans in one atomic `iptables-restore --noflush` batch. */
export async function addBans(
  run: Runner,
  version: IpVersion,
  state: ChainState,
  addresses: readonly string[],
): Promise<void> {
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], banInput(state, addresses));
}

/** Undoes {@link addBans} (used when the other family's batch fails). */
export async function removeBans(
  run: Runner,
  version: IpVersion,
  state: ChainState,
  addresses: readonly string[],
): Promise<void> {
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], unbanInput(state, addresses));
}

/** Removes our jump rules and chain in one batch; false when there was nothing of ours. */
export async function clearChain(
  run: Runner,
  version: IpVersion,
  state: ChainState,
): Promise<boolean> {
  const input = clearInput(state);
  if (input === null) return false;
  await firewall(run, IPTABLES[version].restore, ["-w", "--noflush"], input);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const HELP = `sipcheck ${VERSION}: ban addresses that keep failing to log in to Asterisk

Usage:
  sipcheck.ts [options] [LOG ...]   scan LOGs, ban every address with >= ${THRESHOLD} failures
  sipcheck.ts clear                  remove every rule sipcheck added, and nothing else
  sipcheck.ts list                   print the addresses sipcheck bans now

LOG defaults to ${LOG_DIR}/messages (messages.log if only that exists); a bare
name is looked up in ${LOG_DIR}; "-" reads standard input. Several logs add up.

Options:
  -n, --dry-run          scan and report, change nothing (needs no root)
  -t, --threshold N      ban at N failures instead of ${THRESHOLD}
  -i, --ignore ADDR|CIDR never ban these (repeatable); loopback and this host never are
      --json             print one JSON object (list: a JSON array)
  -q, --quiet            print only new bans and errors
  -h, --help             print this help
  -V, --version          print the version

Exit codes: 0 done, 64 usage error, 66 a log could not be read, 69 iptables missing
or failed, 75 another sipcheck holds the lock, 77 not root, 1 unexpected error.
`;

/** The options of every command. */
const OPTIONS = {
  "dry-run": { type: "boolean", short: "n" },
  threshold: { type: "string", short: "t" },
  ignore: { type: "string", short: "i", multiple: true },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
} as const;

/** Commands that are not a scan. */
const COMMANDS = ["clear", "list"] as const;
type Command = "scan" | (typeof COMMANDS)[number];

/** Parsed command line. */
export interface Options {
  command: Command;
  logs: string[];
  dryRun: boolean;
  threshold: number;
  ignore: Cidr[];
  json: boolean;
  quiet: boolean;
  help: boolean;
  version: boolean;
}

/** Parses argv; throws SipcheckError(64) with a one-line message on bad usage. */
export function parseOptions(argv: readonly string[]): Options {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new SipcheckError(EXIT.usage, (error as Error).message.split("\n")[0]);
  }
  const { values, positionals } = parsed;
  let command: Command = "scan";
  if ((COMMANDS as readonly string[]).includes(positionals[0])) {
    command = positionals.shift() as Command;
    if (positionals.length) {
      throw new SipcheckError(
        EXIT.usage,
        `"${command}" takes no log names (got "${positionals[0]}")`,
      );
    }
  }
  let threshold = THRESHOLD;
  if (values.threshold !== undefined) {
    if (
      !/^\d+$/.test(values.threshold) || !(Number(values.threshold) >= 1) ||
      !Number.isSafeInteger(Number(values.threshold))
    ) {
      throw new SipcheckError(
        EXIT.usage,
        `--threshold must be a positive whole number, not "${values.threshold}"`,
      );
    }
    threshold = Number(values.threshold);
  }
  const ignore = (values.ignore ?? []).map((text) => {
    const block = parseCidr(text);
    if (!block) {
      throw new SipcheckError(
        EXIT.usage,
        `--ignore takes an IP address or CIDR block, not "${text}"`,
      );
    }
    return block;
  });
  return {
    command,
    logs: positionals,
    dryRun: values["dry-run"] ?? false,
    threshold,
    ignore,
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    help: values.help ?? false,
    version: values.version ?? false,
  };
}

/** Writes text to stdout, waiting when the pipe is full. */
function writeStdout(text: string): Promise<void> | void {
  if (process.stdout.write(text)) return;
  return new Promise((resolve) => process.stdout.once("drain", () => resolve()));
}

/** The real world. */
const REAL_DEPS: Deps = {
  stdout: writeStdout,
  stderr: (text) => void process.stderr.write(text),
  run: runProgram,
  uid: () => process.getuid?.() ?? -1,
  lockPath: LOCK_PATH,
  hostAddresses: ownAddresses,
  stdin: () => process.stdin,
};

/** Throws SipcheckError(77) unless running as root. */
function requireRoot(deps: Deps, command: Command): void {
  if (deps.uid() === 0) return;
  throw new SipcheckError(
    EXIT.noPermission,
    command === "scan"
      ? "changing the firewall needs root; use --dry-run (-n) to scan without changing anything"
      : `"${command}" needs root: iptables cannot be read or changed without it`,
  );
}

/** The main job: scan the logs, decide, ban, report. */
async function scan(options: Options, deps: Deps): Promise<number> {
  const tally = newTally();
  const errors: string[] = [];
  let files = 0;
  const logs = options.logs.length ? options.logs.map((arg) => resolveLog(arg)) : [defaultLog()];
  for (const path of logs) {
    const scanner = createScanner(tally);
    try {
      if (path === "-") await scanStream(deps.stdin(), scanner);
      else scanFile(path, scanner);
      files++;
    } catch (error) {
      const message = `cannot read "${path}": ${describeFileError(error)}`;
      errors.push(message);
      deps.stderr(`sipcheck: ${message}\n`);
    }
  }

  const ignore = [
    ...IGNORE.map((text) => parseCidr(text) as Cidr),
    ...deps.hostAddresses().map((address) => parseCidr(address) as Cidr),
    ...options.ignore,
  ];
  const versions = [4, 6] as const;
  const offenders = decide(tally.counts, { ...options, ignore, banned: new Set() });
  const states = new Map<IpVersion, ChainState>();
  let exit: number = errors.length ? EXIT.noInput : EXIT.ok;
  let decisions = offenders;
  let firewallError: SipcheckError | null = null;

  if (!options.dryRun) {
    try {
      for (const version of versions) {
        if (offenders.some((d) => d.action === "banned" && versionOf(d.ip) === version)) {
          states.set(version, await listChain(deps.run, version));
        }
      }
      const banned = new Set([...states.values()].flatMap((state) => [...state.bans]));
      decisions = decide(tally.counts, { ...options, ignore, banned });
      const added: [IpVersion, string[]][] = [];
      try {
        for (const [version, state] of states) {
          const fresh = decisions
            .filter((d) => d.action === "banned" && versionOf(d.ip) === version)
            .map((d) => d.ip);
          if (fresh.length === 0) continue;
          await addBans(deps.run, version, state, fresh);
          added.push([version, fresh]);
        }
      } catch (error) {
        // Each batch is atomic; undo the batches that went in so that the run changes nothing.
        for (const [version, fresh] of added) {
          await removeBans(deps.run, version, states.get(version) as ChainState, fresh)
            .catch(() => {});
        }
        throw error;
      }
    } catch (error) {
      if (!(error instanceof SipcheckError)) throw error;
      firewallError = error;
      decisions = decisions.map((d) => d.action === "banned" ? { ...d, action: "would-ban" } : d);
      errors.push(error.message);
      exit = EXIT.unavailable;
    }
  }

  const summary: ScanSummary = {
    files,
    threshold: options.threshold,
    dryRun: options.dryRun,
    errors,
  };
  if (options.json) {
    for (const piece of jsonReport(decisions, tally, summary)) await deps.stdout(piece);
  } else {
    const report = formatReport(decisions, tally, summary, options.quiet);
    if (report) await deps.stdout(report);
  }
  if (firewallError) deps.stderr(`sipcheck: ${firewallError.message}; nothing was banned\n`);
  if (tally.ambiguous) {
    deps.stderr(
      `sipcheck: warning: ${plural(tally.ambiguous, "security event")} with forged addresses ` +
        "(ambiguous, not counted): someone is trying to frame another address\n",
    );
  }
  return exit;
}

/** `list`: the addresses our chains drop. */
async function list(options: Options, deps: Deps): Promise<number> {
  const bans: string[] = [];
  for (const version of [4, 6] as const) {
    bans.push(...(await listChain(deps.run, version)).bans);
  }
  if (options.json) await deps.stdout(JSON.stringify(bans) + "\n");
  else if (bans.length) await deps.stdout(bans.join("\n") + "\n");
  else if (!options.quiet) await deps.stdout("sipcheck: no addresses are banned\n");
  return EXIT.ok;
}

/** `clear`: remove our jump rules and chains, in both families. */
async function clear(options: Options, deps: Deps): Promise<number> {
  const removed: string[] = [];
  for (const version of [4, 6] as const) {
    const state = await listChain(deps.run, version);
    if (await clearChain(deps.run, version, state)) {
      removed.push(
        `${version === 4 ? "iptables" : "ip6tables"} (${plural(state.bans.size, "ban")})`,
      );
    }
  }
  if (!options.quiet) {
    await deps.stdout(
      removed.length
        ? `sipcheck: removed the ${CHAIN} chain and its jump rules from ${removed.join(" and ")}\n`
        : "sipcheck: nothing to clear\n",
    );
  }
  return EXIT.ok;
}

/**
 * Runs sipcheck with the given arguments and returns the exit code. Expected problems are one
 * line on stderr with a sysexits code; nothing else escapes.
 */
export async function main(
  argv: readonly string[],
  overrides: Partial<Deps> = {},
): Promise<number> {
  const deps: Deps = { ...REAL_DEPS, ...overrides };
  let locked = false;
  try {
    const options = parseOptions(argv);
    if (options.help) {
      await deps.stdout(HELP);
      return EXIT.ok;
    }
    if (options.version) {
      await deps.stdout(`sipcheck ${VERSION}\n`);
      return EXIT.ok;
    }
    if (options.command === "list") {
      requireRoot(deps, "list");
      return await list(options, deps);
    }
    if (options.command === "clear" || !options.dryRun) {
      requireRoot(deps, options.command);
      await takeLock(deps.lockPath, deps.run, options.command);
      locked = true;
    }
    if (options.command === "clear") return await clear(options, deps);
    return await scan(options, deps);
  } catch (error) {
    if (error instanceof SipcheckError) {
      deps.stderr(`sipcheck: ${error.message}\n`);
      return error.code;
    }
    deps.stderr(
      `sipcheck: unexpected error: ${String((error as Error)?.message ?? error).split("\n")[0]}\n`,
    );
    return EXIT.unexpected;
  } finally {
    if (locked) releaseLock(deps.lockPath);
  }
}

if (import.meta.main) process.exitCode = await main(process.argv.slice(2));
