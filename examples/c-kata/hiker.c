#include <stdio.h>
#include "steps.h"

int main(void)
{
    int total = 0;
    total = step01(total);
    total = step02(total);
    total = step03(total);
    total = step04(total);
    total = step05(total);
    total = step06(total);
    total = step07(total);
    total = step08(total);
    total = step09(total);
    total = step10(total);
    total = step11(total);
    total = step12(total);
    total = step13(total);
    total = step14(total);
    total = step15(total);
    total = step16(total);
    total = step17(total);
    total = step18(total);
    total = step19(total);
    total = step20(total);
    total = step21(total);
    total = step22(total);
    total = step23(total);
    total = step24(total);
    printf("total %d, expected %d\n", total, 300);
    return total == 300 ? 0 : 1;
}
