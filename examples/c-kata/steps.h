#ifndef STEPS_H
#define STEPS_H

int step01(int total);
int step02(int total);
int step03(int total);
int step04(int total);
int step05(int total);
int step06(int total);
int step07(int total);
int step08(int total);
int step09(int total);
int step10(int total);
int step11(int total);
int step12(int total);
int step13(int total);
int step14(int total);
int step15(int total);
int step16(int total);
int step17(int total);
int step18(int total);
int step19(int total);
int step20(int total);
int step21(int total);
int step22(int total);
int step23(int total);
int step24(int total);
int step25(int total);
int step26(int total);
int step27(int total);
int step28(int total);
int step29(int total);
int step30(int total);
int step31(int total);
int step32(int total);
int step33(int total);
int step34(int total);
int step35(int total);
int step36(int total);
int step37(int total);
int step38(int total);
int step39(int total);
int step40(int total);

#endif
