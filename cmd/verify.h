/* `almabridge verify PATH`: check the checksums of an event log or a spool directory. */
#ifndef AB_VERIFY_H
#define AB_VERIFY_H

/* Exit 0 when every record is intact, 1 when damage was found (each reported on stdout),
 * 2 for usage errors or a path that cannot be read. */
int ab_cmd_verify(int argc, char **argv);

#endif
