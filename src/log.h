/* log: operator-facing diagnostics on stderr (the audit log is a separate module).
 *
 * Messages never contain secret values: callers pass names, never values. The level is
 * process-wide and set once at start-up before any thread exists. */
#ifndef AUTHPROXY_LOG_H
#define AUTHPROXY_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif
