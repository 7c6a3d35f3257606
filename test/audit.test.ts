// Tests for the audit section. Only node:test and node:assert/strict, so the same file runs
// under `deno test --allow-read` and `node --test` (Node >= 22.18).

import { spawnSync } from "node:child_process";
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  aclAllowsAnyAddress,
  audit,
  AUDIT_CODES,
  auditExitCode,
  auditStatus,
  auditStatusLine,
  buildDialplan,
  CALLER_DIGITS,
  checkAlwaysAuthReject,
  checkAmi,
  checkInsecureInvite,
  checkMissingSecrets,
  checkPjsipAnonymous,
  checkSharedPins,
  checkSipGuests,
  checkWeakSecrets,
  classifyDialDestination,
  diskSource,
  expandVariables,
  extensionMatches,
  findDialOuts,
  formatAuditJson,
  formatAuditText,
  globMatch,
  lastValue,
  loadAsteriskConfig,
  loadConfigFile,
  memorySource,
  parseConfigText,
  parseExtenLine,
  parseSectionHeader,
  runAuditChecks,
  stripComments,
  UnreadableConfigError,
  weakSecretReasons,
} from "../sipcheck.ts";
import { cliCommand } from "./helpers.ts";
import type { AclRule, AsteriskConfig, AuditFinding, ConfigSection } from "../sipcheck.ts";

/** Runs a program with other user and group ids (util-linux). */
const SETPRIV = "/usr/bin/setpriv";

const FIXTURES = fileURLToPath(new URL("../fixtures/asterisk/", import.meta.url));

// ----- helpers ------------------------------------------------------------------------

/** All files of a fixture as a map of absolute path to text, for in-memory variants. */
function fixtureFiles(name: string, root = "/virtual"): Record<string, string> {
  const files: Record<string, string> = {};
  const walk = (dir: string, prefix: string) => {
    for (const entry of readdirSync(dir)) {
      const path = join(dir, entry);
      if (statSync(path).isDirectory()) walk(path, join(prefix, entry));
      else files[join(root, prefix, entry)] = readFileSync(path, "utf8");
    }
  };
  walk(join(FIXTURES, name), "");
  return files;
}

/** A fixture with some files edited: `edit(path, text)` returns the new text. */
function variant(name: string, edit: (file: string, text: string) => string): AsteriskConfig {
  const files = fixtureFiles(name);
  for (const path of Object.keys(files)) files[path] = edit(path.slice(9), files[path]);
  return loadAsteriskConfig("/virtual", memorySource(files));
}

function loadFixture(name: string): AsteriskConfig {
  return loadAsteriskConfig(join(FIXTURES, name), diskSource());
}

function codeCounts(findings: AuditFinding[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const item of findings) counts[item.code] = (counts[item.code] ?? 0) + 1;
  return counts;
}

function section(text: string, name: string): ConfigSection {
  const found = parseConfigText(text).sections.find((candidate) => candidate.name === name);
  assert.ok(found, `section ${name} exists`);
  return found;
}

function dialplanOf(text: string) {
  return buildDialplan(parseConfigText(text, "extensions.conf"));
}

function capture(): {
  io: { stdout(s: string): void; stderr(s: string): void };
  out: string[];
  err: string[];
} {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { stdout: (s) => out.push(s), stderr: (s) => err.push(s) }, out, err };
}

// ----- comments -------------------------------------------------------------------------

const COMMENT_CASES: { name: string; text: string; lines: string[]; unclosed?: number }[] = [
  { name: "line comment", text: "key = value ; note", lines: ["key = value"] },
  { name: "escaped semicolon", text: "note = a\\;b ; c", lines: ["note = a;b"] },
  { name: "dash rule is no block", text: ";------ rule ------;\nkey=1", lines: ["", "key=1"] },
  {
    name: "block over lines",
    text: "a=1\n;-- start\n[hidden]\nb=2 --;c=3\nd=4",
    lines: ["a=1", "", "", "c=3", "d=4"],
  },
  { name: "inline block", text: "x=Dial(;-- old& --;PJSIP/201)", lines: ["x=Dial(PJSIP/201)"] },
  {
    name: "nested block",
    text: ";-- outer\n;-- inner --;\nstill=hidden\n--;\nshown=1",
    lines: ["", "", "", "", "shown=1"],
  },
  { name: ";--; does not close itself", text: ";--;\nhidden=1\n--;", lines: ["", "", ""] },
  {
    name: "unclosed block",
    text: "a=1\n;-- never closed\nb=2",
    lines: ["a=1", "", ""],
    unclosed: 2,
  },
];

for (const c of COMMENT_CASES) {
  test(`stripComments: ${c.name}`, () => {
    const result = stripComments(c.text);
    assert.deepEqual(result.lines, c.lines);
    assert.equal(result.unclosedBlockLine, c.unclosed);
  });
}

// ----- section headers, templates, += ------------------------------------------------------

test("parseSectionHeader: options only right after ]", () => {
  assert.deepEqual(parseSectionHeader("[a](!)"), { name: "a", options: ["!"] });
  assert.deepEqual(parseSectionHeader("[b](t1, t2)"), { name: "b", options: ["t1", "t2"] });
  assert.deepEqual(parseSectionHeader("[c] (!)"), { name: "c", options: [] });
  assert.deepEqual(parseSectionHeader("[d](+)"), { name: "d", options: ["+"] });
  assert.equal(parseSectionHeader("[broken"), undefined);
});

test("templates: (!) marks a template, (t1,t2) copies in order and later wins", () => {
  const text = [
    "[t1](!)",
    "context=first",
    "allow=alaw",
    "[t2](!)",
    "context=second",
    "[peer](t1,t2)",
    "host=dynamic",
  ].join("\n");
  const parsed = parseConfigText(text);
  assert.deepEqual(parsed.sections.map((s) => [s.name, s.template]), [
    ["t1", true],
    ["t2", true],
    ["peer", false],
  ]);
  const peer = section(text, "peer");
  assert.deepEqual(peer.inherits, ["t1", "t2"]);
  assert.equal(lastValue(peer, "context"), "second");
  assert.equal(lastValue(peer, "allow"), "alaw");
  assert.equal(peer.entries.find((e) => e.key === "context")?.inheritedFrom, "t1");
});

test("templates: a missing template is reported, not guessed", () => {
  const parsed = parseConfigText("[peer](nosuch)\nhost=dynamic");
  assert.equal(parsed.problems.length, 1);
  assert.equal(parsed.problems[0].code, "unresolved");
  assert.match(parsed.problems[0].message, /nosuch/);
});

test("(+) adds to the existing section; += appends text; repeated keys are kept", () => {
  const text = [
    "[201]",
    "type=endpoint",
    "permit=10.0.0.0/8",
    "permit=192.168.0.0/16",
    "[201-auth]",
    "password=Kj8",
    "password+=mQ2v",
    "[201](+)",
    "callerid=Front <201>",
    "exten => 1,1,NoOp()",
  ].join("\n");
  const parsed = parseConfigText(text);
  assert.equal(parsed.sections.filter((s) => s.name === "201").length, 1);
  const endpoint = section(text, "201");
  assert.equal(lastValue(endpoint, "callerid"), "Front <201>");
  assert.equal(endpoint.entries.filter((e) => e.key === "permit").length, 2);
  assert.equal(lastValue(endpoint, "exten"), "1,1,NoOp()");
  const auth = section(text, "201-auth");
  assert.equal(lastValue(auth, "password"), "Kj8mQ2v");
  assert.equal(auth.entries.find((e) => e.key === "password")?.line, 7);
});

test("+= on an inherited key changes the copy, not the template", () => {
  const text = "[tpl](!)\nallow=alaw\n[ep](tpl)\nallow += ,g722";
  assert.equal(lastValue(section(text, "ep"), "allow"), "alaw ,g722");
  assert.equal(lastValue(section(text, "tpl"), "allow"), "alaw");
});

test("a line outside any section is reported once per file", () => {
  const parsed = parseConfigText("a=1\nb=2\n[s]\nc=3");
  assert.equal(parsed.problems.length, 1);
  assert.equal(parsed.problems[0].line, 1);
});

const PROBLEM_CASES: [string, string, number, RegExp][] = [
  ["unclosed block comment", "[s]\na=1\n;-- never closed\nb=2", 3, /never closed/],
  ["bad header", "[s]\na=1\n[broken\nb=2", 3, /not a valid section header/],
  ["(+) without a section", "[s]\n[t](+)\nb=2", 2, /not defined above/],
  ["unknown directive", "[s]\n#define X 1", 2, /does not understand/],
  ["#exec", "[s]\n#exec /bin/peers", 2, /#exec runs a program/],
];
for (const [name, text, line, message] of PROBLEM_CASES) {
  test(`parser reports, does not guess: ${name}`, () => {
    const problems = parseConfigText(text).problems;
    assert.deepEqual(problems.map((p) => [p.code, p.line]), [["unresolved", line]]);
    assert.match(problems[0].message, message);
  });
}

test("parser: same => without a preceding exten is reported", () => {
  const dialplan = dialplanOf("[c]\n same => n,NoOp()\nexten => 1,1,NoOp()");
  assert.deepEqual(dialplan.problems.map((p) => [p.code, p.line]), [["unresolved", 2]]);
  assert.equal(dialplan.contexts.get("c")?.extensions.length, 1);
});

test("includes: nesting deeper than the limit stops with a finding", () => {
  const files: Record<string, string> = { "/pbx/f0.conf": "[s]\n#include f1.conf\n" };
  for (let i = 1; i < 30; i++) files[`/pbx/f${i}.conf`] = `k${i}=1\n#include f${i + 1}.conf\n`;
  files["/pbx/f30.conf"] = "end=1\n";
  const file = loadConfigFile("f0.conf", "/pbx", memorySource(files));
  assert.deepEqual(file?.problems.map((p) => [p.code, p.file]), [["unresolved", "f19.conf"]]);
  assert.equal(lastValue(file?.sections[0], "end"), undefined);
});

// ----- includes --------------------------------------------------------------------------

test("includes: relative, quoted, globs in order, tryinclude, missing, cycles", () => {
  const source = memorySource({
    "/pbx/main.conf": [
      "[general]",
      "#include inc/general.conf",
      '#include "peers.d/*.conf"',
      "#tryinclude optional.conf",
      "#include missing.conf",
      "#include /etc/asterisk/abs.conf",
      "#exec /usr/local/bin/peers",
      "last=1",
    ].join("\n"),
    "/pbx/inc/general.conf": "fromgeneral=yes\n",
    "/pbx/peers.d/20-b.conf": "[b]\ntype=peer\n#include loop.conf\n",
    "/pbx/peers.d/10-a.conf": "[a]\ntype=peer\n",
    "/pbx/peers.d/.hidden.conf": "[hidden]\n",
    "/pbx/peers.d/notes.txt": "[notes]\n",
    "/pbx/loop.conf": "looped=1\n#include peers.d/20-b.conf\n",
    "/pbx/abs.conf": "[abs]\n",
  });
  const file = loadConfigFile("main.conf", "/pbx", source);
  assert.ok(file);
  assert.deepEqual(file.sections.map((s) => s.name), ["general", "a", "b", "abs"]);
  const general = file.sections[0];
  assert.equal(lastValue(general, "fromgeneral"), "yes");
  assert.equal(general.entries[0].file, "inc/general.conf");
  assert.equal(lastValue(file.sections[2], "looped"), "1");
  assert.equal(
    lastValue(file.sections[3], "last"),
    "1",
    "lines after includes go on in the current section",
  );
  assert.deepEqual(
    file.problems.map((p) => [p.code, p.file, p.line]),
    [["include-cycle", "loop.conf", 2], ["include-missing", "main.conf", 5], [
      "unresolved",
      "main.conf",
      7,
    ]],
  );
  assert.match(
    file.problems[0].message,
    /peers\.d\/20-b\.conf -> loop\.conf -> peers\.d\/20-b\.conf/,
  );
});

test("includes: a glob with no match under #include is reported, under #tryinclude it is not", () => {
  const source = memorySource({
    "/pbx/x.conf": '[s]\n#tryinclude "none.d/*.conf"\n#include "none.d/*.conf"\n',
  });
  const file = loadConfigFile("x.conf", "/pbx", source);
  assert.deepEqual(file?.problems.map((p) => [p.code, p.line]), [["include-missing", 3]]);
});

const GLOB_CASES: [string, string, boolean][] = [
  ["*.conf", "a.conf", true],
  ["*.conf", "a.conf.bak", false],
  ["*.conf", ".hidden.conf", false],
  [".*.conf", ".hidden.conf", true],
  ["sip?.conf", "sip1.conf", true],
  ["sip?.conf", "sip.conf", false],
  ["[0-9]*", "10-a.conf", true],
  ["[!0-9]*", "10-a.conf", false],
  ["*", "", true],
];
for (const [pattern, name, expected] of GLOB_CASES) {
  test(`globMatch(${pattern}, ${name || '""'}) = ${expected}`, () => {
    assert.equal(globMatch(pattern, name), expected);
  });
}

// ----- dialplan parsing ---------------------------------------------------------------------

test("parseExtenLine: priority, label, application forms", () => {
  assert.deepEqual(parseExtenLine("_X.,n(out),Dial(SIP/${EXTEN}@t,30)"), {
    pattern: "_X.",
    priority: "n",
    label: "out",
    app: "Dial",
    data: "SIP/${EXTEN}@t,30",
  });
  assert.deepEqual(parseExtenLine("s,1,Answer"), {
    pattern: "s",
    priority: "1",
    app: "Answer",
    data: "",
  });
  assert.deepEqual(parseExtenLine("_[1,2]X,1,NoOp(x)")?.pattern, "_[1,2]X");
  assert.equal(parseExtenLine("_X./_0X.,1,Hangup()")?.pattern, "_X.");
  assert.equal(parseExtenLine("nocomma"), undefined);
});

test("buildDialplan: exten/n/same numbering, hints, includes with times, merged contexts", () => {
  const dialplan = dialplanOf([
    "[globals]",
    "TRUNK=SIP/provider",
    "[ctx]",
    "include => other,09:00-17:00,mon-fri,*,*",
    "exten => 100,hint,SIP/100",
    "exten => 100,1,Answer()",
    "exten => _X.,1,NoOp(a)",
    "exten => _X.,n,NoOp(b)",
    " same => n(lbl),Dial(SIP/x)",
    "exten => 100,n,Hangup()",
    "[ctx]",
    "exten => 200,1,NoOp()",
  ].join("\n"));
  const context = dialplan.contexts.get("ctx");
  assert.ok(context);
  assert.equal(dialplan.globals.get("TRUNK"), "SIP/provider");
  assert.deepEqual(context.includes.map((i) => i.target), ["other"]);
  assert.deepEqual(context.extensions.map((e) => e.pattern), ["100", "_X.", "200"]);
  const pattern = context.extensions[1];
  assert.deepEqual(pattern.steps.map((s) => [s.priority, s.app, s.label]), [
    [1, "NoOp", undefined],
    [2, "NoOp", undefined],
    [3, "Dial", "lbl"],
  ]);
  assert.deepEqual(context.extensions[0].steps.map((s) => s.app), ["Answer", "Hangup"]);
});

const MATCH_CASES: [string, string, boolean][] = [
  ["_00X.", "0044123456", true],
  ["_00X.", "00", false],
  ["_00X.", "0144", false],
  ["_9011.", "9011441234", true],
  ["_NXXNXXXXXX", "2125551234", true],
  ["_NXXNXXXXXX", "1125551234", false],
  ["_Z!", "5", true],
  ["_[1-3]XX", "299", true],
  ["_[1-3]XX", "499", false],
  ["_.", "s", true],
  ["_+X.", "+4930", true],
  ["100", "100", true],
  ["1-800", "1800", true],
  ["s", "100", false],
];
for (const [pattern, exten, expected] of MATCH_CASES) {
  test(`extensionMatches(${pattern}, ${exten}) = ${expected}`, () => {
    assert.equal(extensionMatches(pattern, exten), expected);
  });
}

// ----- variables and Dial targets --------------------------------------------------------------

const VARS = new Map([
  ["EXTEN", CALLER_DIGITS],
  ["NUM", "0049301234"],
  ["DIAL_TRUNK", "1"],
  ["OUT_1", "SIP/voiptrunk"],
  ["EMPTY", ""],
]);
const EXPAND_CASES: [string, string][] = [
  ["SIP/${EXTEN}@trunk", `SIP/${CALLER_DIGITS}@trunk`],
  ["${EXTEN:1}", CALLER_DIGITS],
  ["${NUM:2}", "49301234"],
  ["${NUM:-4}", "1234"],
  ["${NUM:2:2}", "49"],
  ["${NUM:0:-6}", "0049"],
  ["${OUT_${DIAL_TRUNK}}/x", "SIP/voiptrunk/x"],
  ["${UNKNOWN}/x", "${UNKNOWN}/x"],
  ["${FILTER(0-9,${EXTEN})}", CALLER_DIGITS],
  ["${CALLERID(num)}", "${CALLERID(num)}"],
  ['$["${NUM:2:2}" = "49"]', "1"],
  ['$["${EMPTY}" != ""]', "0"],
  ["$[${DIAL_TRUNK} = 01]", "1"],
  ["$[${EXTEN} = 1]", CALLER_DIGITS],
  ['$["${UNKNOWN}" = "x"]', '$["${UNKNOWN}" = "x"]'],
];
for (const [text, expected] of EXPAND_CASES) {
  test(`expandVariables(${text})`, () => {
    assert.equal(expandVariables(text, (name) => VARS.get(name)), expected);
  });
}

const D = CALLER_DIGITS;
const DIAL_CASES: [string, string][] = [
  [`SIP/${D}@trunk`, "trunk"],
  [`PJSIP/${D}@provider`, "trunk"],
  [`PJSIP/provider/sip:${D}@sip.example.net`, "trunk"],
  [`SIP/voiptrunk/${D}`, "trunk"],
  [`IAX2/user:pw@host/${D}`, "trunk"],
  [`DAHDI/g0/${D}`, "trunk"],
  [`SIP/${D}`, "other"],
  [`PJSIP/${D}`, "other"],
  ["SIP/0044123@trunk", "other"],
  ["PJSIP/1001", "other"],
  ["${TRUNK}/" + D, "unknown"],
  ["SIP/${PEER}@trunk", "unknown"],
  [`Local/${D}@outbound/n`, "local"],
  ["Console/dsp", "other"],
];
for (const [destination, kind] of DIAL_CASES) {
  test(`classifyDialDestination(${destination.replace(D, "<digits>")}) = ${kind}`, () => {
    assert.equal(classifyDialDestination(destination).kind, kind);
  });
}

test("classifyDialDestination: Local/ gives the extension and context to follow", () => {
  assert.deepEqual(classifyDialDestination(`Local/${D}@outbound/n`), {
    kind: "local",
    exten: D,
    context: "outbound",
  });
});

// ----- the dialplan walk --------------------------------------------------------------------------

type WalkCase = {
  name: string;
  dialplan: string;
  dialOut: boolean;
  guarded?: boolean;
  unknown?: boolean;
};
const WALK_CASES: WalkCase[] = [
  {
    name: "direct Dial with ${EXTEN} to a trunk",
    dialplan: "[in]\nexten => _00X.,1,Dial(SIP/${EXTEN}@trunk)",
    dialOut: true,
  },
  {
    name: "transitive includes",
    dialplan: "[in]\ninclude => a\n[a]\ninclude => b\n[b]\nexten => _X.,1,Dial(PJSIP/${EXTEN:1}@t)",
    dialOut: true,
  },
  {
    name: "include cycle ends",
    dialplan: "[in]\ninclude => a\n[a]\ninclude => in\nexten => 1,1,NoOp()",
    dialOut: false,
  },
  {
    name: "phones only",
    dialplan: "[in]\nexten => _1XX,1,Dial(SIP/${EXTEN},20)\nexten => 0800,1,Dial(SIP/0800@t)",
    dialOut: false,
  },
  {
    name: "Goto with ${EXTEN} into an outbound context",
    dialplan:
      "[in]\nexten => _X.,1,Goto(out,${EXTEN},1)\n[out]\nexten => _0X.,1,Dial(SIP/t/${EXTEN})",
    dialOut: true,
  },
  {
    name: "Goto with a literal number that no outbound pattern matches",
    dialplan: "[in]\nexten => _X.,1,Goto(out,100,1)\n[out]\nexten => _0X.,1,Dial(SIP/t/${EXTEN})",
    dialOut: false,
  },
  {
    name: "Macro passes the number as ${ARG2} and globals give the trunk",
    dialplan: [
      "[globals]",
      "OUT_1=SIP/voiptrunk",
      "[in]",
      "exten => _00X.,1,Macro(dialout,1,${EXTEN})",
      "[macro-dialout]",
      "exten => s,1,Dial(${OUT_${ARG1}}/${ARG2})",
    ].join("\n"),
    dialOut: true,
  },
  {
    name: "Gosub arguments",
    dialplan:
      "[in]\nexten => _X.,1,Gosub(sub,s,1(${EXTEN}))\n[sub]\nexten => s,1,Dial(DAHDI/g0/${ARG1})",
    dialOut: true,
  },
  {
    name: "Set carries the number",
    dialplan: "[in]\nexten => _X.,1,Set(N=${EXTEN:2})\n same => n,Dial(IAX2/prov/${N})",
    dialOut: true,
  },
  {
    name: "Dial(Local/...) is followed",
    dialplan:
      "[in]\nexten => _X.,1,Dial(Local/${EXTEN}@out)\n[out]\nexten => _X.,1,Dial(SIP/${EXTEN}@t)",
    dialOut: true,
  },
  {
    name: "Hangup before Dial",
    dialplan: "[in]\nexten => _X.,1,Hangup()\n same => n,Dial(SIP/${EXTEN}@t)",
    dialOut: false,
  },
  {
    name: "a label after Hangup is reached by GotoIf",
    dialplan:
      "[in]\nexten => _X.,1,GotoIf($[${X}=1]?go)\n same => n,Hangup()\n same => n(go),Dial(SIP/${EXTEN}@t)",
    dialOut: true,
  },
  {
    name: "a GotoIf whose condition is known false skips the dial-out",
    dialplan: [
      "[globals]",
      "OPEN=no",
      "[in]",
      'exten => _X.,1,GotoIf($["${OPEN}"="yes"]?out,${EXTEN},1)',
      " same => n,Hangup()",
      "[out]",
      "exten => _X.,1,Dial(SIP/${EXTEN}@t)",
    ].join("\n"),
    dialOut: false,
  },
  {
    name: "Authenticate() in front of the Dial",
    dialplan: "[in]\nexten => _X.,1,Authenticate(1234)\n same => n,Dial(SIP/${EXTEN}@t)",
    dialOut: true,
    guarded: true,
  },
  {
    name: "DISA without password",
    dialplan:
      "[in]\nexten => 1,1,DISA(no-password,out)\n[out]\nexten => _X.,1,Dial(SIP/${EXTEN}@t)",
    dialOut: true,
  },
  {
    name: "DISA with password",
    dialplan: "[in]\nexten => 1,1,DISA(9876,out)\n[out]\nexten => _X.,1,Dial(SIP/${EXTEN}@t)",
    dialOut: true,
    guarded: true,
  },
  {
    name: "a trunk in an unknown variable is unknown",
    dialplan: "[in]\nexten => _X.,1,Dial(${DB(trunk/out)}/${EXTEN})",
    dialOut: false,
    unknown: true,
  },
  {
    name: "an AGI script is unknown",
    dialplan: "[in]\nexten => _X.,1,AGI(route.php,${EXTEN})",
    dialOut: false,
    unknown: true,
  },
  {
    name: "a switch is unknown",
    dialplan: "[in]\nswitch => Realtime/out@extensions",
    dialOut: false,
    unknown: true,
  },
  {
    name: "Goto into an unknown extension explores what fits",
    dialplan: [
      "[in]",
      "exten => _X.,1,Goto(s-${DIALSTATUS},1)",
      "exten => s-BUSY,1,Hangup()",
      "exten => s-CHANUNAVAIL,1,Dial(SIP/${EXTEN}@t)",
    ].join("\n"),
    dialOut: false,
  },
];
for (const c of WALK_CASES) {
  test(`findDialOuts: ${c.name}`, () => {
    const reaches = findDialOuts(dialplanOf(c.dialplan), "in", "entry");
    const dialOuts = reaches.filter((r) => r.kind === "dial-out");
    assert.equal(dialOuts.length > 0, c.dialOut, JSON.stringify(reaches));
    if (c.dialOut) assert.equal(dialOuts[0].guarded, c.guarded ?? false);
    assert.equal(reaches.some((r) => r.kind === "unknown"), c.unknown ?? false);
    for (const reach of reaches) assert.equal(reach.chain[0], "entry");
  });
}

test("findDialOuts: the chain names every include, jump and the Dial line", () => {
  const dialplan = dialplanOf([
    "[in]",
    "include => routes",
    "[routes]",
    "exten => _0X.,1,Goto(intl,${EXTEN},1)",
    "[intl]",
    "exten => _00X.,1,Dial(SIP/${EXTEN}@t)",
  ].join("\n"));
  const [reach] = findDialOuts(dialplan, "in", "sip.conf:3 [general] context=in");
  assert.deepEqual(reach.chain, [
    "sip.conf:3 [general] context=in",
    "extensions.conf:2 [in] include => routes",
    "extensions.conf:4 [routes] exten => _0X.,1,Goto(intl,${EXTEN},1)",
    "extensions.conf:6 [intl] exten => _00X.,1,Dial(SIP/${EXTEN}@t)",
  ]);
  assert.equal(reach.file, "extensions.conf");
  assert.equal(reach.line, 6);
});

test("findDialOuts: a walk that runs out of budget says so instead of claiming safety", () => {
  const contexts = Array.from({ length: 30 }, (_, i) => `[c${i}]\ninclude => c${i + 1}`);
  const dialplan = dialplanOf(contexts.join("\n") + "\n[c30]\nexten => _X.,1,Dial(SIP/${EXTEN}@t)");
  const limited = findDialOuts(dialplan, "c0", "entry", 10);
  assert.deepEqual(limited.map((r) => r.kind), ["unknown"]);
  assert.match(limited[0].what, /stopped after 10 steps, before 'c10'/);
  const full = findDialOuts(dialplan, "c0", "entry");
  assert.deepEqual(full.map((r) => r.kind), ["dial-out"]);
  assert.equal(full[0].chain.length, 32);
});

// ----- small rules ------------------------------------------------------------------------------------

const SECRET_CASES: [string, string[], string[]][] = [
  ["", ["101"], ["it is empty"]],
  ["101", ["101"], ["shorter than 10 characters", "only digits", "the same as the account name"]],
  ["1234567890123", [], ["only digits"]],
  ["Password123", [], ["one of the most common passwords"]],
  ["branchoffice", ["BranchOffice"], ["the same as the account name"]],
  ["Kj8mQ2vLx9Tz4", ["201"], []],
];
for (const [secret, names, reasons] of SECRET_CASES) {
  test(`weakSecretReasons(${JSON.stringify(secret)})`, () => {
    assert.deepEqual(weakSecretReasons(secret, names), reasons);
  });
}

const ACL_CASES: [string, AclRule[], boolean][] = [
  ["no rules", [], true],
  ["deny all, permit LAN", [
    { sense: "deny", network: "0.0.0.0/0.0.0.0" },
    { sense: "permit", network: "192.168.1.0/255.255.255.0" },
  ], false],
  ["deny all, then permit all (FreePBX-style mistake)", [
    { sense: "deny", network: "0.0.0.0/0.0.0.0" },
    { sense: "permit", network: "0.0.0.0/0.0.0.0" },
  ], true],
  ["permit LAN only, no deny", [{ sense: "permit", network: "10.0.0.0/8" }], true],
  ["deny ::/0 style prefix", [{ sense: "deny", network: "0.0.0.0/0" }], false],
];
for (const [name, rules, expected] of ACL_CASES) {
  test(`aclAllowsAnyAddress: ${name}`, () => assert.equal(aclAllowsAnyAddress(rules), expected));
}

// ----- checks on small configs ----------------------------------------------------------------------

function configFrom(files: Record<string, string>): AsteriskConfig {
  const absolute: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) absolute[`/pbx/${name}`] = text;
  return loadAsteriskConfig("/pbx", memorySource(absolute));
}

const OUT = "[out]\nexten => _00X.,1,Dial(SIP/${EXTEN}@trunk)\n";

type CheckCase = {
  name: string;
  check: (config: AsteriskConfig) => AuditFinding[];
  files: Record<string, string>;
  expected: [string, string, string, number][]; // severity, code, file, line
};
const CHECK_CASES: CheckCase[] = [
  {
    name: "guests default to yes and land in [default], which includes the outbound context",
    check: checkSipGuests,
    files: {
      "sip.conf": "[general]\nbindport=5060\n",
      "extensions.conf": "[default]\ninclude => out\n" + OUT,
    },
    expected: [["critical", "guest-reaches-dialout", "sip.conf", 1]],
  },
  {
    name: "guests with allowguest=no",
    check: checkSipGuests,
    files: {
      "sip.conf": "[general]\nallowguest=no\n",
      "extensions.conf": "[default]\ninclude => out\n" + OUT,
    },
    expected: [],
  },
  {
    name: "guests going nowhere costly",
    check: checkSipGuests,
    files: {
      "sip.conf": "[general]\nallowguest=yes\ncontext=guest\n",
      "extensions.conf": "[guest]\nexten => _.,1,Hangup()\n" + OUT,
    },
    expected: [["warning", "guest-allowed", "sip.conf", 2]],
  },
  {
    name: "guests landing in a context that does not exist",
    check: checkSipGuests,
    files: { "sip.conf": "[general]\ncontext=nowhere\n", "extensions.conf": OUT },
    expected: [["warning", "guest-allowed", "sip.conf", 1]],
  },
  {
    name: "guests but no extensions.conf: unknown, so only a warning",
    check: checkSipGuests,
    files: { "sip.conf": "[general]\n" },
    expected: [["warning", "guest-allowed", "sip.conf", 1]],
  },
  {
    name: "guests reaching a dial-out behind Authenticate only",
    check: checkSipGuests,
    files: {
      "sip.conf": "[general]\n",
      "extensions.conf":
        "[default]\nexten => _X.,1,Authenticate(1234)\n same => n,Goto(out,${EXTEN},1)\n" + OUT,
    },
    expected: [["warning", "guest-allowed", "sip.conf", 1]],
  },
  {
    name: "guests reaching an AGI: warning plus unresolved info",
    check: checkSipGuests,
    files: {
      "sip.conf": "[general]\n",
      "extensions.conf": "[default]\nexten => _X.,1,AGI(route.agi)\n",
    },
    expected: [["warning", "guest-allowed", "sip.conf", 1], [
      "info",
      "unresolved",
      "extensions.conf",
      2,
    ]],
  },
  {
    name: "PJSIP anonymous endpoint into a dial-out",
    check: checkPjsipAnonymous,
    files: { "pjsip.conf": "[anonymous]\ntype=endpoint\ncontext=out\n", "extensions.conf": OUT },
    expected: [["critical", "anonymous-reaches-dialout", "pjsip.conf", 1]],
  },
  {
    name: "PJSIP anonymous endpoint with a permit list is only a warning",
    check: checkPjsipAnonymous,
    files: {
      "pjsip.conf": "[anonymous]\ntype=endpoint\ncontext=out\ndeny=0.0.0.0/0\npermit=10.0.0.0/8\n",
      "extensions.conf": OUT,
    },
    expected: [["warning", "anonymous-endpoint", "pjsip.conf", 1]],
  },
  {
    name: "PJSIP identify matching everything, endpoint without auth",
    check: checkPjsipAnonymous,
    files: {
      "pjsip.conf":
        "[trunk]\ntype=endpoint\ncontext=out\n[trunk-id]\ntype=identify\nendpoint=trunk\nmatch=1.2.3.4,::/0\n",
      "extensions.conf": OUT,
    },
    expected: [["critical", "anonymous-reaches-dialout", "pjsip.conf", 7]],
  },
  {
    name: "PJSIP identify matching everything, endpoint with auth",
    check: checkPjsipAnonymous,
    files: {
      "pjsip.conf":
        "[trunk]\ntype=endpoint\ncontext=out\nauth=a\n[trunk-id]\ntype=identify\nendpoint=trunk\nmatch=0.0.0.0/0\n",
      "extensions.conf": OUT,
    },
    expected: [],
  },
  {
    name: "PJSIP identify for an endpoint that is not defined",
    check: checkPjsipAnonymous,
    files: { "pjsip.conf": "[id]\ntype=identify\nendpoint=ghost\nmatch=0.0.0.0/0.0.0.0\n" },
    expected: [["info", "unresolved", "pjsip.conf", 4]],
  },
  {
    name: "accounts without a secret",
    check: checkMissingSecrets,
    files: {
      "sip.conf":
        "[general]\ncontext=out\n[a]\ntype=friend\nhost=dynamic\n[b]\ntype=peer\nhost=1.2.3.4\n[c]\ntype=friend\ndeny=0.0.0.0/0.0.0.0\npermit=10.0.0.0/8\n",
      "iax.conf": "[general]\n[guest]\ntype=user\ncontext=nowhere\n",
      "pjsip.conf":
        "[ep]\ntype=endpoint\ncontext=nowhere\n[ip-only]\ntype=endpoint\nidentify_by=ip\n",
      "extensions.conf": OUT,
    },
    expected: [
      ["critical", "no-secret-reaches-dialout", "sip.conf", 3],
      ["warning", "no-secret", "iax.conf", 2],
      ["warning", "no-secret", "pjsip.conf", 1],
    ],
  },
  {
    name: "alwaysauthreject",
    check: checkAlwaysAuthReject,
    files: { "sip.conf": "[general]\nalwaysauthreject=no\n[general](+)\nport=5060\n" },
    expected: [["warning", "alwaysauthreject-off", "sip.conf", 2]],
  },
  {
    name: "insecure=invite with and without permit lists",
    check: checkInsecureInvite,
    files: {
      "sip.conf":
        "[open]\ntype=peer\ninsecure=port,invite\n[closed]\ntype=peer\ninsecure=invite\ndeny=0.0.0.0/0.0.0.0\npermit=1.2.3.4\n[old]\ntype=peer\ninsecure=very\n",
    },
    expected: [["warning", "insecure-invite", "sip.conf", 3], [
      "warning",
      "insecure-invite",
      "sip.conf",
      11,
    ]],
  },
  {
    name: "weak secrets in sip, iax and pjsip auth, once per line even through templates",
    check: checkWeakSecrets,
    files: {
      "sip.conf":
        "[general]\n[tpl](!)\nsecret=1234\n[a](tpl)\n[b](tpl)\n[c]\nsecret=Zq8Lw3Kx9Np2Vt7R\n",
      "iax.conf": "[trunk]\ntype=friend\nsecret=trunk\n",
      "pjsip.conf":
        "[1001]\ntype=auth\nusername=1001\npassword=1001x\n[md5]\ntype=auth\nauth_type=md5\npassword=1\n",
    },
    expected: [
      ["warning", "weak-secret", "iax.conf", 3],
      ["warning", "weak-secret", "pjsip.conf", 4],
      ["warning", "weak-secret", "sip.conf", 3],
    ],
  },
  {
    name: "AMI: open and weak, open and strong, closed and weak, loopback",
    check: checkAmi,
    files: {
      "manager.conf": [
        "[general]",
        "enabled=yes",
        "[openweak]",
        "secret=admin",
        "[openstrong]",
        "secret=Zq8Lw3Kx9Np2Vt7R",
        "deny=0.0.0.0/0.0.0.0",
        "permit=0.0.0.0/0.0.0.0",
        "[closedweak]",
        "secret=12345",
        "deny=0.0.0.0/0.0.0.0",
        "permit=127.0.0.1/255.255.255.255",
      ].join("\n"),
    },
    expected: [
      ["critical", "ami-open-weak-secret", "manager.conf", 4],
      ["warning", "ami-open-permit", "manager.conf", 5],
      ["warning", "weak-secret", "manager.conf", 10],
    ],
  },
  {
    name: "AMI bound to loopback: only the weak secret",
    check: checkAmi,
    files: { "manager.conf": "[general]\nenabled=yes\nbindaddr=127.0.0.1\n[u]\nsecret=admin\n" },
    expected: [["warning", "weak-secret", "manager.conf", 5]],
  },
  {
    name: "AMI disabled",
    check: checkAmi,
    files: { "manager.conf": "[general]\nenabled=no\n[u]\nsecret=admin\n" },
    expected: [],
  },
  {
    name: "shared PINs: literal Authenticate and DISA, not files or variables",
    check: checkSharedPins,
    files: {
      "extensions.conf": [
        "[c]",
        "exten => 1,1,Authenticate(4711)",
        "exten => 2,1,Authenticate(/etc/asterisk/pins,m)",
        "exten => 3,1,Authenticate(${PIN})",
        "exten => 4,1,DISA(1234,out)",
        "exten => 5,1,DISA(no-password,out)",
      ].join("\n"),
    },
    expected: [["info", "shared-pin", "extensions.conf", 2], [
      "info",
      "shared-pin",
      "extensions.conf",
      5,
    ]],
  },
];
for (const c of CHECK_CASES) {
  test(`check: ${c.name}`, () => {
    const findings = c.check(configFrom(c.files));
    const got = findings.map((f) => [f.severity, f.code, f.file, f.line]);
    const sort = (rows: unknown[][]) =>
      [...rows].sort((a, b) => String(a).localeCompare(String(b)));
    assert.deepEqual(sort(got), sort(c.expected));
    for (const item of findings) assert.ok(item.message.endsWith("."), item.message);
  });
}

test("check: a critical reachability finding carries the include chain", () => {
  const config = configFrom({
    "sip.conf": "[general]\ncontext=default\n",
    "extensions.conf": "[default]\ninclude => out\n" + OUT,
  });
  const [critical] = checkSipGuests(config);
  assert.deepEqual(critical.chain, [
    "sip.conf:2 [general] context=default",
    "extensions.conf:2 [default] include => out",
    "extensions.conf:4 [out] exten => _00X.,1,Dial(SIP/${EXTEN}@trunk)",
  ]);
});

// ----- fixtures ------------------------------------------------------------------------------------------

type FixtureCase = { name: string; status: string; codes: Record<string, number> };
const FIXTURE_CASES: FixtureCase[] = [
  {
    name: "freepbx-hole",
    status: "CRITICAL",
    codes: {
      "guest-reaches-dialout": 1,
      "ami-open-weak-secret": 1,
      "alwaysauthreject-off": 1,
      "insecure-invite": 1,
      "weak-secret": 2,
    },
  },
  { name: "hardened", status: "OK", codes: {} },
  {
    name: "pjsip-only",
    status: "CRITICAL",
    codes: { "anonymous-reaches-dialout": 1, "weak-secret": 1 },
  },
  {
    name: "chansip-only",
    status: "WARNING",
    codes: {
      "guest-allowed": 1,
      "alwaysauthreject-off": 1,
      "weak-secret": 2,
      "no-secret": 1,
      "shared-pin": 1,
    },
  },
  {
    name: "tricky",
    status: "CRITICAL",
    codes: {
      "anonymous-reaches-dialout": 1,
      "include-cycle": 1,
      "include-missing": 1,
      unresolved: 3,
    },
  },
];

for (const c of FIXTURE_CASES) {
  test(`fixture ${c.name}: status ${c.status} and the expected findings`, () => {
    const findings = runAuditChecks(loadFixture(c.name));
    assert.equal(auditStatus(findings), c.status);
    assert.deepEqual(codeCounts(findings), c.codes);
  });

  test(`fixture ${c.name}: each finding points at a real line that says what it is about`, () => {
    const keyOnLine: Partial<Record<string, RegExp>> = {
      "weak-secret": /secret|password/i,
      "ami-open-weak-secret": /secret/i,
      "alwaysauthreject-off": /alwaysauthreject/,
      "insecure-invite": /insecure/,
      "include-missing": /#include/,
      "include-cycle": /#include/,
      "shared-pin": /Authenticate|DISA/,
    };
    for (const item of runAuditChecks(loadFixture(c.name))) {
      assert.ok(AUDIT_CODES.includes(item.code), item.code);
      if (item.line === 0) continue;
      const text =
        readFileSync(join(FIXTURES, c.name, item.file), "utf8").split("\n")[item.line - 1];
      assert.ok(text && text.trim() !== "", `${item.file}:${item.line} is not empty`);
      const pattern = keyOnLine[item.code];
      if (pattern) assert.match(text, pattern, `${item.code} at ${item.file}:${item.line}`);
    }
  });
}

test("fixture freepbx-hole: the chain goes through the custom include to the international route", () => {
  const finding = runAuditChecks(loadFixture("freepbx-hole")).find((f) =>
    f.code === "guest-reaches-dialout"
  );
  assert.ok(finding?.chain);
  assert.equal(finding.file, "sip.conf");
  assert.match(
    finding.chain[0],
    /^sip_general_additional\.conf:\d+ \[general\] context = from-sip-external$/,
  );
  assert.ok(
    finding.chain.some((step) =>
      step.includes("[from-trunk-custom] include => outbound-allroutes")
    ),
  );
  assert.match(finding.chain[finding.chain.length - 1], /\[outrt-\d\] exten => _(00X|9011)\.,n,/);
  assert.match(finding.message, /allowguest is not set and defaults to yes/);
});

test("fixture freepbx-hole: with ALLOW_SIP_ANON=no the guest path stops (condition evaluated)", () => {
  const config = variant(
    "freepbx-hole",
    (file, text) =>
      file === "extensions_additional.conf"
        ? text.replace("ALLOW_SIP_ANON = yes", "ALLOW_SIP_ANON = no")
        : text,
  );
  const findings = runAuditChecks(config);
  assert.equal(codeCounts(findings)["guest-reaches-dialout"], undefined);
  assert.equal(codeCounts(findings)["guest-allowed"], 1);
});

test("fixture freepbx-hole: without the custom include the guest path stops", () => {
  const config = variant(
    "freepbx-hole",
    (file, text) =>
      file === "extensions_custom.conf" ? text.replace("include => outbound-allroutes", "") : text,
  );
  assert.equal(codeCounts(runAuditChecks(config))["guest-reaches-dialout"], undefined);
});

test("fixture freepbx-hole: allowguest=no removes every guest finding", () => {
  const config = variant(
    "freepbx-hole",
    (file, text) => file === "sip_general_custom.conf" ? text + "allowguest = no\n" : text,
  );
  const counts = codeCounts(runAuditChecks(config));
  assert.equal(counts["guest-reaches-dialout"], undefined);
  assert.equal(counts["guest-allowed"], undefined);
});

test("fixture hardened: a trunk identified by username as well would be reported", () => {
  const config = variant(
    "hardened",
    (file, text) => file === "pjsip.conf" ? text.replace("identify_by = ip\n", "") : text,
  );
  const findings = runAuditChecks(config);
  const pjsip = readFileSync(join(FIXTURES, "hardened", "pjsip.conf"), "utf8").split("\n");
  const providerLine = pjsip.indexOf("[provider]") + 1;
  assert.ok(providerLine > 0);
  assert.deepEqual(findings.map((f) => [f.code, f.file, f.line]), [
    ["no-secret", "pjsip.conf", providerLine],
  ]);
});

test("fixture tricky: templates, (+), += and comments resolve as Asterisk does", () => {
  const config = loadFixture("tricky");
  const sections = config.pjsip?.sections ?? [];
  const carrier = sections.find((s) =>
    s.name === "carrier-b" && lastValue(s, "type") === "endpoint"
  );
  assert.ok(carrier);
  assert.deepEqual(carrier.inherits, ["trunk-defaults", "carrier-b-settings"]);
  assert.equal(lastValue(carrier, "context"), "from-trunk");
  assert.equal(lastValue(carrier, "allow"), "alaw ,g722");
  assert.equal(
    sections.some((s) => s.name.startsWith("carrier-a")),
    false,
    "block comment hides carrier-a",
  );
  const auth = sections.find((s) => s.name === "201-auth");
  assert.equal(lastValue(auth, "password"), "Kj8mQ2vLx9Tz4");
  const endpoint201 = sections.filter((s) => s.name === "201");
  assert.equal(endpoint201.length, 1);
  assert.equal(lastValue(endpoint201[0], "callerid"), '"Front desk" <201>');
  const did = config.dialplan.contexts.get("did");
  assert.deepEqual(did?.extensions[0].steps.map((s) => s.data), [
    "NOTE=front desk; main number",
    "PJSIP/201,30",
    "",
  ]);
  assert.deepEqual(config.dialplan.contexts.get("default")?.includes, []);
  const problems = runAuditChecks(config).filter((f) => f.code.startsWith("include-"));
  assert.deepEqual(problems.map((f) => [f.code, f.file, f.line]), [
    ["include-missing", "manager.conf", 4],
    ["include-cycle", "pjsip.d/99-loop.conf", 2],
  ]);
});

test("fixture tricky: the dial-out is found through Gosub with the later template's context", () => {
  const finding = runAuditChecks(loadFixture("tricky")).find((f) => f.severity === "critical");
  assert.equal(finding?.code, "anonymous-reaches-dialout");
  assert.match(finding?.message ?? "", /context 'from-trunk'/);
  assert.deepEqual(finding?.chain?.map((step) => step.split(" ")[0]), [
    "pjsip.d/30-trunk.conf:25",
    "extensions.d/trunk.conf:8",
    "extensions.d/trunk.conf:14",
  ]);
});

// ----- output and exit codes -------------------------------------------------------------------------------

function fake(severity: AuditFinding["severity"], n: number): AuditFinding[] {
  return Array.from({ length: n }, (_, i) => ({
    severity,
    code: "weak-secret" as const,
    file: "sip.conf",
    line: i + 1,
    message: `m${i}.`,
  }));
}

const STATUS_CASES: [AuditFinding[], string, number][] = [
  [[], "SIPCHECK AUDIT OK - 0 critical, 0 warnings", 0],
  [fake("info", 2), "SIPCHECK AUDIT OK - 0 critical, 0 warnings, 2 info", 0],
  [fake("warning", 1), "SIPCHECK AUDIT WARNING - 0 critical, 1 warning", 1],
  [
    [...fake("critical", 2), ...fake("warning", 1)],
    "SIPCHECK AUDIT CRITICAL - 2 critical, 1 warning",
    2,
  ],
  [
    [...fake("critical", 1), ...fake("warning", 3), ...fake("info", 1)],
    "SIPCHECK AUDIT CRITICAL - 1 critical, 3 warnings, 1 info",
    2,
  ],
];
for (const [findings, line, code] of STATUS_CASES) {
  test(`status line: ${line}`, () => {
    assert.equal(auditStatusLine(findings), line);
    assert.equal(auditExitCode(auditStatus(findings)), code);
  });
}

test("auditExitCode: UNKNOWN is 3", () => assert.equal(auditExitCode("UNKNOWN"), 3));

test("formatAuditText: status line first, then groups by severity with chains", () => {
  const findings: AuditFinding[] = [
    {
      severity: "critical",
      code: "guest-reaches-dialout",
      file: "sip.conf",
      line: 2,
      message: "Bad.",
      chain: ["a", "b"],
    },
    { severity: "info", code: "unresolved", file: "extensions.ael", line: 0, message: "Unread." },
  ];
  const lines = formatAuditText(findings, "/etc/asterisk").split("\n");
  assert.equal(lines[0], auditStatusLine(findings));
  const critical = lines.indexOf("CRITICAL");
  const info = lines.indexOf("INFO");
  assert.ok(critical > 0 && info > critical);
  assert.equal(lines.indexOf("WARNING"), -1);
  assert.equal(lines[critical + 1], "  sip.conf:2 [guest-reaches-dialout] Bad.");
  assert.deepEqual(lines.slice(critical + 2, critical + 4), ["      -> a", "      -> b"]);
  assert.equal(lines[info + 1], "  extensions.ael [unresolved] Unread.");
});

test("formatAuditJson: status and findings, chain only when present", () => {
  const findings = runAuditChecks(loadFixture("pjsip-only"));
  const parsed = JSON.parse(formatAuditJson(findings));
  assert.deepEqual(Object.keys(parsed), ["status", "findings"]);
  assert.equal(parsed.status, auditStatus(findings));
  for (const item of parsed.findings) {
    const keys = Object.keys(item);
    assert.deepEqual(keys.slice(0, 5), ["severity", "code", "file", "line", "message"]);
    assert.ok(keys.length === 5 || (keys.length === 6 && Array.isArray(item.chain)));
  }
});

for (const c of FIXTURE_CASES) {
  test(`audit ${c.name}: exit code, status line and JSON agree`, async () => {
    const dir = join(FIXTURES, c.name);
    const text = capture();
    const code = await audit(["--config-dir", dir], text.io);
    const expected = runAuditChecks(loadFixture(c.name));
    assert.equal(code, auditExitCode(auditStatus(expected)));
    assert.equal(code, { OK: 0, WARNING: 1, CRITICAL: 2 }[c.status]);
    assert.equal(text.out.join("").split("\n")[0], auditStatusLine(expected));
    assert.match(text.out.join(""), new RegExp(`^SIPCHECK AUDIT ${c.status} - `));
    assert.deepEqual(text.err, []);

    const json = capture();
    assert.equal(await audit(["--json", `--config-dir=${dir}`], json.io), code);
    const parsed = JSON.parse(json.out.join(""));
    assert.equal(parsed.status, c.status);
    assert.deepEqual(codeCounts(parsed.findings), c.codes);
  });
}

test("audit: no secret from the configuration appears in the output", async () => {
  const out = capture();
  await audit(["--config-dir", join(FIXTURES, "freepbx-hole"), "--json"], out.io);
  const text = out.out.join("");
  for (const secret of ["amp111", "fop555", "Xq7pL2vN9sKw4RzT", "7Hq2vX9pLm4KzW8r"]) {
    assert.equal(text.includes(secret), false, secret);
  }
});

const USAGE_CASES: [string, string[]][] = [
  ["unknown option", ["--nope"]],
  ["positional argument", ["extra"]],
  ["missing value", ["--config-dir"]],
  ["empty config dir", ["--config-dir", ""]],
];
for (const [name, argv] of USAGE_CASES) {
  test(`audit: bad usage (${name}) is one line on stderr and exit 3`, async () => {
    const out = capture();
    assert.equal(await audit(argv, out.io), 3);
    assert.deepEqual(out.out, []);
    assert.equal(out.err.length, 1);
    assert.match(out.err[0], /^sipcheck: audit: [^\n]+\n$/);
  });
}

test("audit: --help prints usage and exits 0", async () => {
  const out = capture();
  assert.equal(await audit(["--help"], out.io), 0);
  assert.match(out.out.join(""), /^usage: sipcheck audit/);
});

test("audit: an unreadable config dir is UNKNOWN (3) with a plugin status line", async () => {
  const out = capture();
  assert.equal(await audit(["--config-dir", join(FIXTURES, "does-not-exist")], out.io), 3);
  assert.match(
    out.out.join(""),
    /^SIPCHECK AUDIT UNKNOWN - cannot read config dir .*does-not-exist/,
  );
  const json = capture();
  assert.equal(
    await audit(["--json", "--config-dir", join(FIXTURES, "does-not-exist")], json.io),
    3,
  );
  assert.equal(JSON.parse(json.out.join("")).status, "UNKNOWN");
});

test("audit: a dir without any Asterisk file is UNKNOWN (3)", async () => {
  const out = capture();
  assert.equal(await audit(["--config-dir", FIXTURES], out.io), 3);
  assert.match(out.out.join(""), /^SIPCHECK AUDIT UNKNOWN - no sip\.conf/);
});

test("audit: an unexpected error is one line on stderr and exit 3, no stack", async () => {
  const err: string[] = [];
  const io = {
    stdout: () => {
      throw new Error("disk full\n    at somewhere (file.ts:1:1)");
    },
    stderr: (s: string) => err.push(s),
  };
  assert.equal(await audit(["--config-dir", join(FIXTURES, "hardened")], io), 3);
  assert.deepEqual(err, ["sipcheck: audit: unexpected error: disk full\n"]);
});

/** A copy of fixture `name` in a new temporary directory, handed to `use`, then removed. */
async function withFixtureCopy(name: string, use: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "sipcheck-audit-"));
  try {
    cpSync(join(FIXTURES, name), dir, { recursive: true });
    await use(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("diskSource: a missing path is undefined, one that cannot be read throws", () => {
  const source = diskSource();
  const hardened = join(FIXTURES, "hardened");
  assert.equal(source.readText(join(hardened, "no-such.conf")), undefined);
  assert.equal(source.readText(join(hardened, "sip.conf", "below-a-file")), undefined); // ENOTDIR
  assert.equal(source.listDir(join(hardened, "sip.conf")), undefined); // a file, not a directory
  assert.throws(
    () => source.readText(hardened), // a directory where a file is read
    (error) => error instanceof UnreadableConfigError && error.code === "EISDIR",
  );
});

test("audit: a config file that exists but cannot be read is UNKNOWN (3), naming it", async () => {
  await withFixtureCopy("hardened", async (dir) => {
    const sip = join(dir, "sip.conf");
    rmSync(sip);
    mkdirSync(sip); // read as a file: EISDIR, for root too
    const out = capture();
    assert.equal(await audit(["--config-dir", dir], out.io), 3);
    assert.equal(out.out.join(""), `SIPCHECK AUDIT UNKNOWN - cannot read ${sip} (EISDIR)\n`);
    assert.deepEqual(out.err, []);
    const json = capture();
    assert.equal(await audit(["--json", "--config-dir", dir], json.io), 3);
    assert.deepEqual(JSON.parse(json.out.join("")), {
      status: "UNKNOWN",
      findings: [],
      error: `cannot read ${sip} (EISDIR)`,
    });
  });
});

test("audit: an included file that cannot be read is UNKNOWN (3), naming it", async () => {
  await withFixtureCopy("hardened", async (dir) => {
    mkdirSync(join(dir, "sip_custom.conf"));
    writeFileSync(
      join(dir, "sip.conf"),
      readFileSync(join(dir, "sip.conf"), "utf8") + "\n#include sip_custom.conf\n",
    );
    const out = capture();
    assert.equal(await audit(["--config-dir", dir], out.io), 3);
    assert.match(
      out.out.join(""),
      /^SIPCHECK AUDIT UNKNOWN - cannot read .*sip_custom\.conf \(EISDIR\)\n$/,
    );
  });
});

test("audit: a config file without read permission is UNKNOWN (3)", async (t) => {
  await withFixtureCopy("hardened", async (dir) => {
    const sip = join(dir, "sip.conf");
    chmodSync(sip, 0);
    if (process.getuid?.() !== 0) {
      const out = capture();
      assert.equal(await audit(["--config-dir", dir], out.io), 3);
      assert.equal(out.out.join(""), `SIPCHECK AUDIT UNKNOWN - cannot read ${sip} (EACCES)\n`);
      return;
    }
    // Root reads a file of mode 000: the CLI runs as nobody, as a monitoring user would.
    if (!existsSync(SETPRIV)) return t.skip(`needs ${SETPRIV} to run the audit as nobody`);
    chmodSync(dir, 0o755);
    const home = mkdtempSync(join(tmpdir(), "sipcheck-nobody-"));
    try {
      chmodSync(home, 0o777); // Deno's cache, written as nobody
      const nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
      // setpriv runs the runtime itself: a program it started (env) could no longer reach one
      // under /root, where npx puts them, once the ids are nobody's.
      const command = [...nobody, ...cliCommand(["audit", "--config-dir", dir])];
      const result = spawnSync(SETPRIV, command, {
        encoding: "utf8",
        env: { ...process.env, HOME: home, DENO_DIR: home },
      });
      assert.equal(result.stdout, `SIPCHECK AUDIT UNKNOWN - cannot read ${sip} (EACCES)\n`);
      assert.equal(result.stderr, "");
      assert.equal(result.status, 3);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
