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
    total = step25(total);
    total = step26(total);
    total = step27(total);
    total = step28(total);
    total = step29(total);
    total = step30(total);
    total = step31(total);
    total = step32(total);
    total = step33(total);
    total = step34(total);
    total = step35(total);
    total = step36(total);
    total = step37(total);
    total = step38(total);
    total = step39(total);
    total = step40(total);
    printf("total %d, expected 820\n", total);
    return total == 820 ? 0 : 1;
}
