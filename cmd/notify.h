/* systemd's readiness protocol (sd_notify), without libsystemd. */
#ifndef AB_NOTIFY_H
#define AB_NOTIFY_H

/* Send state (e.g. "READY=1", "STOPPING=1") to the service manager when $NOTIFY_SOCKET is
 * set (Type=notify units); does nothing otherwise. Returns 0, or -1 when sending failed. */
int ab_notify(const char *state);

#endif
