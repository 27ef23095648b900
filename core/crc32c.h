/* CRC32C (Castagnoli), the checksum of Kafka's record batches, iSCSI and ext4: every record
 * of the event log and the spool carries one (see the event log's checksum index). */
#ifndef AB_CRC32C_H
#define AB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* The CRC32C of p[0..n) continuing from crc (0 to start). Uses the SSE 4.2 instruction
 * where the CPU has it, a table otherwise; both give the same result. Any thread. */
uint32_t ab_crc32c(uint32_t crc, const void *p, size_t n);

#endif
