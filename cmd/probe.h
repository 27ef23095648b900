/* almabridge --probe: a tiny HTTP client for container health checks (no curl needed). */
#ifndef AB_PROBE_H
#define AB_PROBE_H

/* When argv holds --probe [URL] (or --probe=URL), GET URL (default: /readyz on the address
 * of --listen, https when --tls-cert is set, read from the same command line, environment
 * and config file as the daemon; a lone --probe takes PID 1's command line when PID 1 is
 * almabridge, as in a container) and return the exit code: 0 for a 2xx answer within
 * AB_PROBE_TIMEOUT_S seconds, 1 otherwise. Returns -1 when argv has no --probe. */
int ab_probe_main(int argc, char **argv, char **envp);

#define AB_PROBE_TIMEOUT_S 3

#endif
