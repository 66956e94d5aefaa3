/* ProcessPrng for Wine 8, whose bcryptprimitives.dll lacks it: Rust's standard library (1.78
 * and later) imports it for random bytes. Placed beside the agent's executable in the Wine
 * tests only; real Windows 10 and later have it. It forwards to RtlGenRandom
 * (advapi32's SystemFunction036), which Wine implements. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG n = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, n)) {
            return FALSE;
        }
        data += n;
        length -= n;
    }
    return TRUE;
}
