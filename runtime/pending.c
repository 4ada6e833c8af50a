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

int orch_mock_start(orch_mock **out, const char *host, int port, char *err,
                    size_t errlen) {
  (void)out; (void)host; (void)port;
  return orch__err(err, errlen, ORCH_ESTATE, "the mock LLM is not built yet");
}
int orch_mock_port(const orch_mock *m) { (void)m; return 0; }
unsigned long orch_mock_requests(const orch_mock *m) { (void)m; return 0; }
void orch_mock_free(orch_mock *m) { (void)m; }
