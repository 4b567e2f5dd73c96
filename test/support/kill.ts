/**
 * Signals for the processes a test started, by pid, that can never reach anything else.
 *
 * `process.kill(0, …)` signals the caller's whole process group and `process.kill(-1, …)` every
 * process the user may signal: a pid read from an empty pid file (`Number("")` is 0) or a spawn
 * that failed (`child.pid ?? 0`) once SIGKILLed the test runner, npm and CI with it (exit 137).
 * These refuse every pid but a real other process (an integer above 1, not this process).
 *
 *   killProcess(Number(readFileSync(pidFile, "utf8")));   // false: nothing sent
 *   killGroup(child.pid);                                 // the group the detached child leads
 */

const valid = (pid: number | undefined): pid is number =>
  pid !== undefined && Number.isInteger(pid) && pid > 1 && pid !== process.pid;

/** Sends `signal` to process `pid`; false when `pid` is not a real other process or it is gone. */
export function killProcess(pid: number | undefined, signal: NodeJS.Signals = "SIGKILL"): boolean {
  if (!valid(pid)) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Sends `signal` to the process group `pgid` leads (never the caller's own); false when none was. */
export function killGroup(pgid: number | undefined, signal: NodeJS.Signals = "SIGKILL"): boolean {
  if (!valid(pgid)) return false;
  try {
    process.kill(-pgid, signal);
    return true;
  } catch {
    return false;
  }
}
