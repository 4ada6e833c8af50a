/* pending.c: entry points whose subsystems are being merged in; each is
 * removed as its real implementation lands. */
#include "orch_int.h"

int orch_scripts_check(orch_runtime *rt, const char *dir, orch_report_fn report,
                       void *ud) {
  (void)rt;
  if (report) report(ud, dir, 0, "the script checker is not built yet");
  return 1;
}

unsigned orch_runtime_scripts(orch_runtime *rt, char *buf, size_t buflen) {
  (void)rt;
  if (buf && buflen) buf[0] = '\0';
  return 0;
}
