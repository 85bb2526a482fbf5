#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "steps.h"

/* Step 35 of the trail.  Each step sorts a few numbers, formats them
   and checks the text it made, then adds its own number to the running
   total: the sum of all steps is known in advance, and every module is
   as much work for the compiler as a small real one. */

static int ascending(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static unsigned checksum(const char *text)
{
    unsigned sum = 35u;
    while (*text)
        sum = sum * 31u + (unsigned char)*text++;
    return sum;
}

static int formatted_length(const int *values, int count)
{
    char buffer[256] = "";
    int i;
    for (i = 0; i < count; i++) {
        char item[16];
        snprintf(item, sizeof item, i ? ",%d" : "%d", values[i]);
        strncat(buffer, item, sizeof buffer - strlen(buffer) - 1);
    }
    return checksum(buffer) ? (int)strlen(buffer) : -1;
}

int step35(int total)
{
    int values[] = { 11, 10, 35, 0, 11 };
    int count = (int)(sizeof values / sizeof values[0]);
    qsort(values, (size_t)count, sizeof values[0], ascending);
    if (formatted_length(values, count) <= 0)
        return total;
    return total + 35;
}
