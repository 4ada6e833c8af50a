/* test.h: a tiny test harness in libuv's style. Each test/test_*.c file
 * defines TEST(name) { ... } with ASSERT* checks; the tests register
 * themselves, and test_main.c runs them (all, or those whose names contain
 * argv[1]) and ends with "N passed, N failed". */
#ifndef ORCH_TEST_H
#define ORCH_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*orch_test_fn)(void);
void orch_test_register(const char *name, orch_test_fn fn);
void orch_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
extern int orch_test_failed;

#define TEST(name)                                                       \
  static void test_##name(void);                                         \
  __attribute__((constructor)) static void test_reg_##name(void) {       \
    orch_test_register(#name, test_##name);                              \
  }                                                                      \
  static void test_##name(void)

#define ASSERT(c)                                                        \
  do {                                                                   \
    if (!(c)) {                                                          \
      orch_test_fail(__FILE__, __LINE__, "assertion failed: %s", #c);    \
      return;                                                            \
    }                                                                    \
  } while (0)

#define ASSERT_EQ(a, b)                                                  \
  do {                                                                   \
    long long a_ = (long long)(a), b_ = (long long)(b);                  \
    if (a_ != b_) {                                                      \
      orch_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a,   \
                     #b, a_, b_);                                        \
      return;                                                            \
    }                                                                    \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                              \
  do {                                                                   \
    const char *a_ = (a), *b_ = (b);                                     \
    if (!a_ || !b_ || strcmp(a_, b_) != 0) {                             \
      orch_test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"",   \
                     #a, #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");    \
      return;                                                            \
    }                                                                    \
  } while (0)

#define ASSERT_CONTAINS(hay, needle)                                     \
  do {                                                                   \
    const char *h_ = (hay), *n_ = (needle);                              \
    if (!h_ || !strstr(h_, n_)) {                                        \
      orch_test_fail(__FILE__, __LINE__, "%s contains \"%s\": \"%s\"",   \
                     #hay, n_, h_ ? h_ : "(null)");                      \
      return;                                                            \
    }                                                                    \
  } while (0)

#endif
