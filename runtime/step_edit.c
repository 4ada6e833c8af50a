/* step_edit.c provides the `edit` kind: SEARCH/REPLACE blocks applied to a
 * file atomically. (Being built; plans using it are refused for now.) */
#include "orch_int.h"

const orch__kind orch__kind_edit = {.name = "edit", .where = ORCH__ON_WORKER};
