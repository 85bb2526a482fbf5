#include "steps.h"

/* Step 1 of the trail: each step adds its own number to the running
   total, so the sum of all steps is known in advance. */
int step01(int total)
{
    int i, k = 0;
    for (i = 0; i < 1; i++)
        k += 1;
    return total + k;
}
