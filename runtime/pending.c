/* pending.c: entry points whose subsystems are being merged in; each is
 * removed as its real implementation lands. */
#include "orch_int.h"

int orch_mock_start(orch_mock **out, const char *host, int port, char *err,
                    size_t errlen) {
  (void)out; (void)host; (void)port;
  return orch__err(err, errlen, ORCH_ESTATE, "the mock LLM is not built yet");
}
int orch_mock_port(const orch_mock *m) { (void)m; return 0; }
unsigned long orch_mock_requests(const orch_mock *m) { (void)m; return 0; }
void orch_mock_free(orch_mock *m) { (void)m; }
