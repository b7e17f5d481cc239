// The 16 NF4 levels (webrwkv.quant.NF4_LEVELS, given as the template value NF4_LEVELS) for the NF4 kernels.
const NF4 = array<f32, 16>({{NF4_LEVELS}});
