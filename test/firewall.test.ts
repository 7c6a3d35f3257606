/**
 * The firewall: restore input (pure), then the real iptables and ip6tables, each test in a
 * private network namespace of its own (`unshare --net --mount`, with a private /run for the
 * lock), and once at the packet level across a veth pair. The host's firewall is never touched.
 * Without root these tests skip with the reason; CI runs them as root.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  banInput,
  banRefusal,
  CHAIN,
  type ChainState,
  clearInput,
  clearRefusal,
  failureReason,
  jumpRules,
  parseListing,
  PORTS,
  unbanInput,
  unclearInput,
} from "../sipcheck.ts";
import {
  cliCommand,
  firewallSkipReason,
  inNamespace,
  REGISTER,
  RUNTIME,
  shellQuote,
  SIPCHECK,
  tempDir,
} from "./helpers.ts";

const dir = tempDir();
after(dir.remove);

/** Writes a log in the temp dir with `n` failures per address and returns its path. */
function log(name: string, failures: Record<string, number>): string {
  const path = join(dir.path, name);
  writeFileSync(path, Object.entries(failures).map(([a, n]) => REGISTER(a).repeat(n)).join(""));
  return path;
}

/** A chain state: what is given, nothing foreign, the jumps at the top of their chains. */
function chainState(
  fields: { exists: boolean; bans?: string[]; jumps?: string[]; foreignRules?: string[] },
): ChainState {
  const jumps = fields.jumps ?? [];
  return {
    exists: fields.exists,
    bans: new Set(fields.bans ?? []),
    jumps,
    jumpPositions: jumps.map((_, k) => k + 1),
    foreignRules: fields.foreignRules ?? [],
  };
}

const empty = chainState({ exists: false });

describe("restore input", () => {
  test("a first ban declares the chain and inserts the jumps at the top of INPUT", () => {
    assert.equal(
      banInput(empty, ["203.0.113.5", "2001:db8::5"]),
      [
        "*filter",
        `:${CHAIN} - [0:0]`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        `-A ${CHAIN} -s 2001:db8::5/128 -j DROP`,
        `-I INPUT 1 -p udp -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`,
        `-I INPUT 1 -p tcp -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`,
        "COMMIT",
        "",
      ].join("\n"),
    );
  });
  test("an existing chain is never declared again (that would flush it)", () => {
    const state = chainState({ exists: true, bans: ["203.0.113.1"], jumps: jumpRules() });
    const input = banInput(state, ["203.0.113.6"]);
    assert.equal(input, `*filter\n-A ${CHAIN} -s 203.0.113.6/32 -j DROP\nCOMMIT\n`);
  });
  test("a missing jump is put back", () => {
    const state = chainState({ exists: true, jumps: [jumpRules()[0]] });
    assert.match(banInput(state, ["203.0.113.6"]), /-I INPUT 1 -p tcp .*\nCOMMIT/);
    assert.doesNotMatch(banInput(state, ["203.0.113.6"]), /-p udp/);
  });
  test("only IP addresses get into the input", () => {
    for (
      const bad of [
        "203.0.113.5\n-F INPUT",
        "pbx.example",
        "",
        "1.2.3.4/8",
        "2001:DB8::1",
        "fe80::1%eth0",
      ]
    ) {
      assert.throws(() => banInput(empty, [bad]), /not an IP address/);
    }
  });
  test("unbanInput undoes banInput", () => {
    assert.equal(
      unbanInput(empty, ["203.0.113.5"]),
      [
        "*filter",
        ...jumpRules().map((rule) => rule.replace("-A ", "-D ")),
        `-F ${CHAIN}`,
        `-X ${CHAIN}`,
        "COMMIT",
        "",
      ].join("\n"),
    );
    const existing = chainState({ exists: true, jumps: jumpRules() });
    assert.equal(
      unbanInput(existing, ["203.0.113.5"]),
      `*filter\n-D ${CHAIN} -s 203.0.113.5/32 -j DROP\nCOMMIT\n`,
    );
  });
  test("clear removes our jumps and chain only, and nothing when there is nothing", () => {
    assert.equal(clearInput(empty), null);
    const state = chainState({ exists: true, jumps: jumpRules() });
    const input = clearInput(state)!;
    assert.equal(input.split("\n").filter((l) => l.startsWith("-D INPUT")).length, 2);
    assert.match(input, new RegExp(`-F ${CHAIN}\n-X ${CHAIN}\nCOMMIT\n$`));
    const twice = chainState({ exists: true, jumps: [...jumpRules(), jumpRules()[0]] });
    assert.equal(
      clearInput(twice)!.split("\n").filter((l) => l.startsWith("-D INPUT")).length,
      3,
      "every copy of our exact jump goes",
    );
    assert.throws(
      () => clearInput(chainState({ exists: true, foreignRules: [`-A ${CHAIN} -j ACCEPT`] })),
      /foreign rules/,
      "never a flush of a chain that holds someone else's rules",
    );
  });
  test("parseListing reads our chain and only our chain", () => {
    const state = parseListing([
      "-P INPUT ACCEPT",
      "-N sipcheck",
      "-N sipcheck-other",
      "-A INPUT -p tcp -m multiport --dports 5060,5061,4569,5038 -j sipcheck",
      "-A INPUT -s 198.51.100.1/32 -j DROP",
      "-A sipcheck -s 203.0.113.5/32 -j DROP",
      "-A sipcheck -s 2001:db8::5/128 -j DROP",
      "-A sipcheck-other -s 203.0.113.9/32 -j DROP",
      "",
    ].join("\n"));
    assert.equal(state.exists, true);
    assert.deepEqual([...state.bans], ["203.0.113.5", "2001:db8::5"]);
    assert.deepEqual(state.jumps, [
      "-A INPUT -p tcp -m multiport --dports 5060,5061,4569,5038 -j sipcheck",
    ]);
    assert.deepEqual(state.jumpPositions, [1]);
    assert.deepEqual(state.foreignRules, []);
  });
  test("parseListing: only a ban of one address is sipcheck's; every other rule of the chain is foreign", () => {
    const foreign = [
      "-A sipcheck -s 10.0.0.0/8 -j ACCEPT",
      "-A sipcheck -p tcp -m tcp --dport 22 -j LOG",
      "-A sipcheck -s 203.0.113.0/24 -j DROP",
      "-A sipcheck -s 2001:db8::/32 -j DROP",
      "-A sipcheck -s ::ffff:203.0.113.7/128 -j DROP",
      "-A sipcheck -s 203.0.113.8/32 -j REJECT --reject-with icmp-port-unreachable",
      "-A sipcheck -s 203.0.113.9/32 -p udp -j DROP",
      "-A sipcheck -j RETURN",
    ];
    const state = parseListing(
      ["-N sipcheck", "-A sipcheck -s 203.0.113.5/32 -j DROP", ...foreign].join("\n"),
    );
    assert.deepEqual([...state.bans], ["203.0.113.5"]);
    assert.deepEqual(state.foreignRules, foreign);
  });
  test("parseListing: every rule that jumps or goes to the chain, with its place in its chain", () => {
    const state = parseListing([
      "-N sipcheck",
      "-N mine",
      "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
      ...jumpRules(),
      "-A INPUT -p udp -m multiport --dports 5060 -j sipcheck",
      "-A FORWARD -g sipcheck",
      '-A mine -s 198.51.100.0/24 -m comment --comment "not -j sipcheck" -j ACCEPT',
      "-A mine -p tcp -m multiport --dports 5060:5070 -j sipcheck",
    ].join("\n"));
    assert.deepEqual(state.jumps, [
      ...jumpRules(),
      "-A INPUT -p udp -m multiport --dports 5060 -j sipcheck",
      "-A FORWARD -g sipcheck",
      "-A mine -p tcp -m multiport --dports 5060:5070 -j sipcheck",
    ]);
    assert.deepEqual(state.jumpPositions, [2, 3, 4, 1, 2]);
  });
  test("unclearInput puts back what clearInput removes: the bans in order, the jumps where they were", () => {
    const state = parseListing([
      "-N sipcheck",
      "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
      jumpRules()[1],
      "-A INPUT -p tcp --dport 22 -j ACCEPT",
      jumpRules()[0],
      "-A sipcheck -s 203.0.113.6/32 -j DROP",
      "-A sipcheck -s 203.0.113.5/32 -j DROP",
    ].join("\n"));
    assert.equal(
      unclearInput(state),
      [
        "*filter",
        `:${CHAIN} - [0:0]`,
        `-A ${CHAIN} -s 203.0.113.6/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        jumpRules()[1].replace("-A INPUT", "-I INPUT 2"),
        jumpRules()[0].replace("-A INPUT", "-I INPUT 4"),
        "COMMIT",
        "",
      ].join("\n"),
    );
  });
});

describe("whose rules: what stops a ban run or clear", () => {
  const ours = chainState({ exists: true, bans: ["203.0.113.5"], jumps: jumpRules() });
  test("nothing stops either when the chain and its jumps are exactly sipcheck's", () => {
    assert.equal(banRefusal(4, ours), null);
    assert.equal(clearRefusal(4, ours), null);
    assert.equal(clearRefusal(6, empty), null);
  });
  test("foreign rules in the chain stop both, named with the family", () => {
    const state = chainState({
      exists: true,
      jumps: jumpRules(),
      foreignRules: [
        "-A sipcheck -s 10.0.0.0/8 -j ACCEPT",
        "-A sipcheck -p tcp -m tcp --dport 22 -j LOG",
      ],
    });
    const rules =
      '("-A sipcheck -s 10.0.0.0/8 -j ACCEPT", "-A sipcheck -p tcp -m tcp --dport 22 -j LOG")';
    assert.equal(
      clearRefusal(4, state),
      `iptables: the sipcheck chain holds rules sipcheck did not write ${rules}`,
    );
    assert.equal(
      banRefusal(6, state),
      `ip6tables: the sipcheck chain holds rules sipcheck did not write ${rules}; sipcheck bans ` +
        "only in a chain of its own: delete them (ip6tables -D sipcheck N), or rename that chain " +
        "(ip6tables -E sipcheck NEWNAME)",
    );
  });
  test("a jump that is not exactly one of sipcheck's stops clear, not a ban run", () => {
    for (
      const jump of [
        "-A INPUT -p udp -m multiport --dports 5060 -j sipcheck",
        "-A INPUT -p tcp -m multiport --dports 5060:5070 -j sipcheck",
        "-A FORWARD -j sipcheck",
        "-A FORWARD -g sipcheck",
        jumpRules()[0].replace("INPUT", "FORWARD"),
      ]
    ) {
      const state = chainState({ exists: true, jumps: [...jumpRules(), jump] });
      assert.equal(
        clearRefusal(6, state),
        `ip6tables: a rule sipcheck did not write jumps to it ("${jump}")`,
      );
      assert.equal(banRefusal(6, state), null);
    }
  });
  test("many foreign rules: the first three, and how many more; always one line", () => {
    const foreignRules = Array.from(
      { length: 5 },
      (_, k) => `-A sipcheck -s 10.0.0.${k}/32 -j ACCEPT`,
    );
    const jumps = ["-A FORWARD -j sipcheck", "-A OUTPUT -j sipcheck"];
    const refusal = clearRefusal(4, chainState({ exists: true, jumps, foreignRules }))!;
    assert.match(
      refusal,
      /10\.0\.0\.2\/32 -j ACCEPT" and 2 more\), and rules sipcheck did not write jump to it \("-A FORWARD -j sipcheck", "-A OUTPUT -j sipcheck"\)$/,
    );
    assert.ok(!refusal.includes("\n"));
  });
});

describe("why an iptables command failed, in one line", () => {
  test("iptables-nft: the cause on the line after the version banner", () => {
    assert.equal(
      failureReason(
        "ip6tables-restore v1.8.9 (nf_tables): \n" +
          "line 3: CHAIN_DEL failed (Device or resource busy): chain sipcheck\n",
        4,
      ),
      "line 3: CHAIN_DEL failed (Device or resource busy): chain sipcheck",
    );
  });
  test("the banner goes, the help hint goes, the meaningful lines are joined", () => {
    assert.equal(
      failureReason(
        "iptables-restore v1.8.9 (nf_tables): invalid mask `129' specified\n" +
          "Error occurred at line: 2\n" +
          "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n",
        2,
      ),
      "invalid mask `129' specified; Error occurred at line: 2",
    );
    assert.equal(
      failureReason("iptables v1.8.9 (legacy): Chain 'sipcheck' does not exist\n", 1),
      "Chain 'sipcheck' does not exist",
    );
  });
  test("legacy messages stay whole; nothing at all gives the exit code", () => {
    assert.equal(
      failureReason("iptables-restore: line 3 failed\n", 1),
      "iptables-restore: line 3 failed",
    );
    assert.equal(failureReason("", 4), "exit code 4");
    assert.equal(failureReason("iptables-restore v1.8.9 (nf_tables): \n\n", 4), "exit code 4");
  });
  test("always one line, and not endless", () => {
    const reason = failureReason("a\r\n\tb\x1b[31m\n" + "x".repeat(5000), 1);
    assert.ok(!/\p{Cc}/u.test(reason), JSON.stringify(reason));
    assert.ok(reason.startsWith("a; b [31m; x"), reason);
    assert.ok(reason.length <= 400 && reason.endsWith("…"));
  });
});

const skip = firewallSkipReason();

/** Runs a script in a fresh namespace and splits its output at lines of `==`. */
function sections(script: string): string[] {
  const ran = inNamespace(script);
  assert.equal(ran.code, 0, `script failed (${ran.code}): ${ran.stderr}\n${ran.stdout}`);
  return ran.stdout.split("==\n");
}

/** The filter table as iptables-save prints it, without comments and counters. */
const SAVE = (binary: string) =>
  `${binary}-save -t filter | grep -v '^#' | sed 's/ \\[[0-9]*:[0-9]*\\]$//'`;

/**
 * A shell command that runs sipcheck's main with `argv`, with the real iptables, but every
 * ip6tables-restore batch gets one bad rule (an impossible prefix), so that it fails.
 */
function poisoned(name: string, argv: readonly string[]): string {
  const driver = join(dir.path, name);
  writeFileSync(
    driver,
    `import process from "node:process";\n` +
      `import { main, runProgram } from ${JSON.stringify(SIPCHECK)};\n` +
      `process.exitCode = await main(${JSON.stringify(argv)}, {\n` +
      `  run: (binary, args, input) => runProgram(binary, args, binary.endsWith("ip6tables-restore") && input\n` +
      `    ? input.replace("COMMIT", "-A ${CHAIN} -s 2001:db8::1/129 -j DROP\\nCOMMIT") : input),\n` +
      `});\n`,
  );
  const command = cliCommand([], ["-A"]).filter((word) => word !== SIPCHECK);
  return (RUNTIME === "deno" ? [...command.slice(0, -1), "-A", driver] : [command[0], driver])
    .map(shellQuote).join(" ");
}

describe("real iptables in a private network namespace", { skip: skip ?? false }, () => {
  const BOTH = `${SAVE("iptables")}; echo ==; ${SAVE("ip6tables")}`;
  const offenders = log("offenders.log", {
    "203.0.113.5:5060": 250,
    "203.0.113.6": 300,
    "[2001:db8::5]:5060": 200,
    "203.0.113.7:5060": 199,
  });
  const more = log("more.log", { "203.0.113.8:5060": 200, "[2001:db8::8]:5060": 200 });

  test("bans land in our chain, jumps exist for udp and tcp, in both families", () => {
    const [run, v4, v6] = sections(
      `sipcheck -q ${offenders}; echo ==; iptables -S; echo ==; ip6tables -S`,
    );
    assert.equal(
      run,
      "banned          203.0.113.6  300 failures\n" +
        "banned          203.0.113.5  250 failures\n" +
        "banned          2001:db8::5  200 failures\n",
    );
    const jumps = (protocol: string) =>
      `-A INPUT -p ${protocol} -m multiport --dports ${PORTS.join(",")} -j ${CHAIN}`;
    assert.equal(
      v4,
      [
        "-P INPUT ACCEPT",
        "-P FORWARD ACCEPT",
        "-P OUTPUT ACCEPT",
        `-N ${CHAIN}`,
        jumps("tcp"),
        jumps("udp"),
        `-A ${CHAIN} -s 203.0.113.6/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        "",
      ].join("\n"),
    );
    assert.match(
      v6,
      new RegExp(`${jumps("tcp")}\n${jumps("udp")}\n-A ${CHAIN} -s 2001:db8::5/128 -j DROP\n$`),
    );
  });

  test("a rerun adds no duplicate and says already banned; existing bans survive new ones", () => {
    const [first, second, third, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; sipcheck ${offenders}; echo ==; sipcheck --json ${more}; echo ==; ` +
        `sipcheck -q ${more}; echo ==; iptables -S ${CHAIN}; ip6tables -S ${CHAIN}`,
    );
    assert.match(first, /already banned +203\.0\.113\.6 +300 failures\n/);
    assert.match(first, /: 3 already banned\n$/);
    const json = JSON.parse(second);
    assert.deepEqual(json.addresses.map((a: { action: string }) => a.action), ["banned", "banned"]);
    assert.equal(third, "", "nothing new, nothing printed with -q");
    assert.equal(
      rules,
      [
        `-N ${CHAIN}`,
        `-A ${CHAIN} -s 203.0.113.6/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.5/32 -j DROP`,
        `-A ${CHAIN} -s 203.0.113.8/32 -j DROP`,
        `-N ${CHAIN}`,
        `-A ${CHAIN} -s 2001:db8::5/128 -j DROP`,
        `-A ${CHAIN} -s 2001:db8::8/128 -j DROP`,
        "",
      ].join("\n"),
    );
  });

  test("foreign rules and chains are the same after a run and after clear; clear twice is fine", () => {
    const foreign = [
      "iptables -N foreign",
      "iptables -A foreign -s 198.51.100.1 -j ACCEPT",
      "iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
      "iptables -A INPUT -p tcp --dport 22 -j ACCEPT",
      "iptables -A INPUT -p udp --dport 5060 -s 198.51.100.2 -j ACCEPT",
      "ip6tables -N foreign6",
      "ip6tables -A INPUT -s 2001:db8:1::/48 -j foreign6",
      "iptables -P FORWARD DROP",
    ].join(" && ");
    const [before4, before6, after4, after6, clear1, cleared4, cleared6, clear2] = sections(
      `${foreign} && ${SAVE("iptables")}; echo ==; ${SAVE("ip6tables")}; echo ==; ` +
        `sipcheck -q ${offenders} >/dev/null; ${SAVE("iptables")}; echo ==; ${
          SAVE("ip6tables")
        }; echo ==; ` +
        `sipcheck clear; echo ==; ${SAVE("iptables")}; echo ==; ${
          SAVE("ip6tables")
        }; echo ==; sipcheck clear`,
    );
    const notOurs = (save: string) =>
      save.split("\n").filter((line) => !line.includes(CHAIN)).join("\n");
    assert.match(after4, new RegExp(`-A ${CHAIN} -s 203.0.113.6/32 -j DROP`));
    assert.equal(notOurs(after4), before4, "iptables-save outside our chain is unchanged by a run");
    assert.equal(notOurs(after6), before6);
    assert.match(
      after4,
      new RegExp(
        `^-A INPUT -p tcp .* -j ${CHAIN}\n-A INPUT -p udp .* -j ${CHAIN}\n-A INPUT -m conntrack`,
        "m",
      ),
      "our jumps come first",
    );
    assert.equal(
      clear1,
      "sipcheck: removed the sipcheck chain and its jump rules from iptables (2 bans) and ip6tables (1 ban)\n",
    );
    assert.equal(cleared4, before4, "after clear, iptables-save is what it was before the run");
    assert.equal(cleared6, before6);
    assert.equal(clear2, "sipcheck: nothing to clear\n");
  });

  test("list matches the chain", () => {
    const [list, json, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; sipcheck list; echo ==; sipcheck list --json; echo ==; ` +
        `iptables -S ${CHAIN}; ip6tables -S ${CHAIN}`,
    );
    const inChain = [...rules.matchAll(/-s (\S+)\/\d+ -j DROP/g)].map((m) => m[1]);
    assert.deepEqual(list.trim().split("\n"), inChain);
    assert.deepEqual(JSON.parse(json), inChain);
  });

  test("clear --dry-run and clear -n change nothing and say what clear would remove", () => {
    const [before4, before6, dry, after4, after6] = sections(
      `sipcheck -q ${offenders} >/dev/null; ${BOTH}; echo ==; ` +
        `sipcheck clear --dry-run; echo "exit $?"; sipcheck -n clear; echo "exit $?"; echo ==; ${BOTH}`,
    );
    const line = "sipcheck: would remove the sipcheck chain and its jump rules from iptables " +
      "(2 bans) and ip6tables (1 ban)\nexit 0\n";
    assert.equal(dry, line + line);
    assert.match(before4, new RegExp(`-A ${CHAIN} -s 203.0.113.6/32 -j DROP`));
    assert.equal(after4, before4);
    assert.equal(after6, before6);
  });

  test("a jump from someone else's rule makes clear change nothing in either family (69)", () => {
    const [before4, before6, run, after4, after6] = sections(
      `sipcheck -q ${offenders} >/dev/null; ip6tables -A FORWARD -j ${CHAIN}; ${BOTH}; echo ==; ` +
        `sipcheck clear 2>&1; echo "exit $?"; echo ==; ${BOTH}`,
    );
    assert.equal(
      run,
      "sipcheck: nothing was cleared, in either family: ip6tables: a rule sipcheck did not " +
        `write jumps to it ("-A FORWARD -j ${CHAIN}"); sipcheck removes only what it wrote: ` +
        "delete or move those rules, then run clear again\nexit 69\n",
    );
    assert.match(before4, new RegExp(`-A ${CHAIN} -s 203.0.113.6/32 -j DROP`));
    assert.equal(after4, before4, "IPv4 is not cleared when IPv6 cannot be");
    assert.equal(after6, before6);
  });

  test("clear leaves a chain it did not fill alone, and users' own jumps to it (69)", () => {
    const setups = [
      `iptables -N ${CHAIN}; iptables -A ${CHAIN} -s 10.0.0.0/8 -j ACCEPT; ` +
      `iptables -A ${CHAIN} -p tcp --dport 22 -j LOG`,
      `sipcheck -q ${offenders} >/dev/null; ` +
      `iptables -A INPUT -p udp -m multiport --dports 5060 -j ${CHAIN}`,
      `sipcheck -q ${offenders} >/dev/null; ` +
      `ip6tables -A INPUT -p tcp -m multiport --dports 5060:5070 -j ${CHAIN}`,
    ];
    const expected = [
      /^sipcheck: nothing was cleared, in either family: iptables: the sipcheck chain holds rules sipcheck did not write \("-A sipcheck -s 10\.0\.0\.0\/8 -j ACCEPT", "-A sipcheck -p tcp -m tcp --dport 22 -j LOG"\); sipcheck removes only what it wrote/,
      /^sipcheck: nothing was cleared, in either family: iptables: a rule sipcheck did not write jumps to it \("-A INPUT -p udp -m multiport --dports 5060 -j sipcheck"\);/,
      /^sipcheck: nothing was cleared, in either family: ip6tables: a rule sipcheck did not write jumps to it \("-A INPUT -p tcp -m multiport --dports 5060:5070 -j sipcheck"\);/,
    ];
    for (const [k, setup] of setups.entries()) {
      const [before4, before6, run, after4, after6] = sections(
        `${setup}; ${BOTH}; echo ==; sipcheck clear 2>&1; echo "exit $?"; echo ==; ${BOTH}`,
      );
      assert.match(run, expected[k]);
      assert.match(run, /\nexit 69\n$/);
      assert.equal(run.split("\n").length, 3, "one line, then the exit code");
      assert.equal(after4, before4, setup);
      assert.equal(after6, before6, setup);
    }
  });

  test("a ban run will not add to a chain that holds foreign rules (69, nothing changes)", () => {
    const [before4, before6, run, after4, after6] = sections(
      `iptables -N ${CHAIN}; iptables -A ${CHAIN} -s 10.0.0.0/8 -j ACCEPT; ${BOTH}; echo ==; ` +
        `sipcheck -q ${offenders} 2>&1; echo "exit $?"; echo ==; ${BOTH}`,
    );
    assert.equal(
      run,
      "would ban       203.0.113.6  300 failures\n" +
        "would ban       203.0.113.5  250 failures\n" +
        "would ban       2001:db8::5  200 failures\n" +
        "sipcheck: iptables: the sipcheck chain holds a rule sipcheck did not write " +
        '("-A sipcheck -s 10.0.0.0/8 -j ACCEPT"); sipcheck bans only in a chain of its own: ' +
        "delete it (iptables -D sipcheck N), or rename that chain (iptables -E sipcheck NEWNAME); " +
        "nothing was banned\nexit 69\n",
    );
    assert.equal(after4, before4);
    assert.equal(after6, before6, "the IPv6 batch was not applied either");
  });

  test("a ban run bans in a chain that someone else also jumps to, and leaves that jump be", () => {
    const [run, rules] = sections(
      `sipcheck -q ${offenders} >/dev/null; iptables -A FORWARD -j ${CHAIN}; ` +
        `sipcheck -q ${more}; echo "exit $?"; echo ==; iptables -S`,
    );
    assert.equal(
      run,
      "banned          203.0.113.8  200 failures\nbanned          2001:db8::8  200 failures\nexit 0\n",
    );
    assert.match(rules, new RegExp(`-A FORWARD -j ${CHAIN}\n`));
    assert.match(rules, new RegExp(`-A ${CHAIN} -s 203.0.113.8/32 -j DROP\n`));
  });

  test("a run whose second batch fails leaves both chains as they were (69)", () => {
    const runDriver = poisoned("poisoned-ban.ts", ["-q", more]);
    const [before, result, afterRun] = sections(
      `sipcheck -q ${offenders} >/dev/null; ${SAVE("iptables")}; ${SAVE("ip6tables")}; echo ==; ` +
        `${runDriver} 2>&1; echo "exit $?"; echo ==; ${SAVE("iptables")}; ${SAVE("ip6tables")}`,
    );
    assert.match(result, /exit 69\n$/);
    assert.match(
      result,
      /ip6tables-restore -w --noflush failed: invalid mask `129' specified; Error occurred at line: \d+; nothing was banned\n/,
      "the cause, not iptables-nft's version banner",
    );
    assert.match(before, /203\.0\.113\.6/);
    assert.equal(
      afterRun,
      before,
      "203.0.113.8 went in with the first batch and was taken out again",
    );
  });

  test("clear whose IPv6 batch fails puts IPv4 back as it was, jumps in their places (69)", () => {
    const around = [
      "iptables -I INPUT 1 -p tcp --dport 22 -j ACCEPT",
      "iptables -I INPUT 3 -m conntrack --ctstate ESTABLISHED -j ACCEPT",
      "iptables -A INPUT -p icmp -j ACCEPT",
    ].join("; ");
    const [before4, before6, result, after4, after6] = sections(
      `sipcheck -q ${offenders} >/dev/null; ${around}; ${BOTH}; echo ==; ` +
        `${poisoned("poisoned-clear.ts", ["clear"])} 2>&1; echo "exit $?"; echo ==; ${BOTH}`,
    );
    assert.match(
      before4,
      new RegExp(`--dport 22 -j ACCEPT\n-A INPUT -p tcp .* -j ${CHAIN}\n-A INPUT -m conntrack`),
    );
    assert.match(
      result,
      /^sipcheck: \/usr\/sbin\/ip6tables-restore -w --noflush failed: invalid mask `129' specified; Error occurred at line: \d+; iptables had been cleared and was put back as it was: nothing was changed\nexit 69\n$/,
    );
    assert.equal(after4, before4);
    assert.equal(after6, before6);
  });
});

describe("packets across a veth pair", { skip: skip ?? false }, () => {
  test("datagrams from a banned source are dropped, others delivered, all again after clear", () => {
    const listener = join(dir.path, "listen.ts");
    writeFileSync(
      listener,
      `import dgram from "node:dgram";\n` +
        `for (const [type, address] of [["udp4", "0.0.0.0"], ["udp6", "::"]]) {\n` +
        `  const socket = dgram.createSocket(type === "udp6" ? { type, ipv6Only: true } : { type });\n` +
        `  socket.on("message", (message, from) => {\n` +
        `    if (String(message) === "stop") process.exit(0);\n` +
        `    console.log(String(message) + " " + from.address);\n` +
        `  });\n` +
        `  socket.bind(5060, address);\n` +
        `}\n` +
        `setTimeout(() => process.exit(3), 20000);\n`,
    );
    const sender = join(dir.path, "send.ts");
    writeFileSync(
      sender,
      `import dgram from "node:dgram";\n` +
        `const [phase, ...sources] = ${
          RUNTIME === "deno" ? "Deno.args" : "process.argv.slice(2)"
        };\n` +
        `for (const source of sources) {\n` +
        `  const v6 = source.includes(":");\n` +
        `  const socket = dgram.createSocket(v6 ? "udp6" : "udp4");\n` +
        `  await new Promise((resolve) => socket.bind(0, source, resolve));\n` +
        `  await new Promise((resolve) => socket.send(phase, 5060, v6 ? "2001:db8::10" : "192.0.2.10", resolve));\n` +
        `  socket.close();\n` +
        `}\n`,
    );
    const runtime = (script: string) =>
      (RUNTIME === "deno"
        ? [cliCommand([], ["-A"])[0], "run", "-A", script]
        : [cliCommand([])[0], script]).map(shellQuote).join(" ");
    const offenders = log("veth.log", { "192.0.2.66:5060": 200, "[2001:db8::66]:5060": 200 });
    const sources = "192.0.2.66 192.0.2.67 2001:db8::66 2001:db8::67";
    const [received, banned] = sections([
      "ip link set lo up",
      "ip netns add peer",
      "ip link add pbx0 type veth peer name peer0 netns peer",
      "ip addr add 192.0.2.10/24 dev pbx0 && ip addr add 2001:db8::10/64 dev pbx0 nodad && ip link set pbx0 up",
      "ip -n peer addr add 192.0.2.66/24 dev peer0 && ip -n peer addr add 192.0.2.67/24 dev peer0",
      "ip -n peer addr add 2001:db8::66/64 dev peer0 nodad && ip -n peer addr add 2001:db8::67/64 dev peer0 nodad",
      "ip -n peer link set peer0 up && ip -n peer link set lo up",
      `${runtime(listener)} > /run/received &`,
      "sleep 1",
      `ip netns exec peer ${runtime(sender)} before ${sources}`,
      `sipcheck -q ${offenders} > /run/banned`,
      `ip netns exec peer ${runtime(sender)} banned ${sources}`,
      "sipcheck -q clear",
      `ip netns exec peer ${runtime(sender)} cleared ${sources}`,
      "sleep 0.5",
      `ip netns exec peer ${runtime(sender)} stop 192.0.2.67`,
      "wait",
      "ip netns del peer",
      "sort /run/received; echo ==; cat /run/banned",
    ].join("\n"));
    assert.equal(
      banned,
      "banned          192.0.2.66    200 failures\nbanned          2001:db8::66  200 failures\n",
    );
    assert.deepEqual(received.trim().split("\n"), [
      "banned 192.0.2.67",
      "banned 2001:db8::67",
      "before 192.0.2.66",
      "before 192.0.2.67",
      "before 2001:db8::66",
      "before 2001:db8::67",
      "cleared 192.0.2.66",
      "cleared 192.0.2.67",
      "cleared 2001:db8::66",
      "cleared 2001:db8::67",
    ]);
  });
});

describe("why firewall tests skip", () => {
  test("the reason is visible when they do", { skip: skip ?? false }, () => {
    assert.equal(skip, null);
  });
  if (skip) test(`firewall tests skipped: ${skip}`, { skip }, () => {});
});
