// GGML's reference K-quant quantizers on fixed inputs, for llmjp's byte-for-byte test.
// Built and run by kquant_quantize_golden.py against a llama.cpp build (libggml-base).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void quantize_row_q4_K_ref(const float * x, void * y, int64_t k);
void quantize_row_q5_K_ref(const float * x, void * y, int64_t k);
void quantize_row_q6_K_ref(const float * x, void * y, int64_t k);

// Reads n f32 values from stdin (binary), writes the three formats' bytes to stdout.
int main(int argc, char ** argv) {
    int64_t n = atoll(argv[1]);
    float * x = malloc(n * sizeof(float));
    if (fread(x, sizeof(float), n, stdin) != (size_t) n) return 1;
    uint8_t * y = malloc(n); // 210/256 bytes per value at most
    quantize_row_q4_K_ref(x, y, n); fwrite(y, 1, n / 256 * 144, stdout);
    quantize_row_q5_K_ref(x, y, n); fwrite(y, 1, n / 256 * 176, stdout);
    quantize_row_q6_K_ref(x, y, n); fwrite(y, 1, n / 256 * 210, stdout);
    return 0;
}
