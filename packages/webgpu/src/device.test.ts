import { describe, expect, it } from 'vitest';
import { dawnFlags } from './device.ts';

describe('dawnFlags', () => {
  it('passes KVC_DAWN_FLAGS through, split on ";" so a flag may hold a comma list', () => {
    expect(dawnFlags('backend=vulkan;enable-dawn-features=skip_validation,use_user_defined_labels_in_backend', true)).toEqual([
      'backend=vulkan',
      'enable-dawn-features=skip_validation,use_user_defined_labels_in_backend',
    ]);
    expect(dawnFlags(undefined, true)).toEqual([]);
    expect(dawnFlags(';;', true)).toEqual([]);
  });

  it('adds disable_robustness when robustness is off, merged into the enabled toggles', () => {
    expect(dawnFlags(undefined, false)).toEqual(['enable-dawn-features=disable_robustness']);
    expect(dawnFlags('backend=vulkan;enable-dawn-features=skip_validation', false)).toEqual([
      'backend=vulkan',
      'enable-dawn-features=skip_validation,disable_robustness',
    ]);
    expect(dawnFlags('enable-dawn-features=disable_robustness', false)).toEqual(['enable-dawn-features=disable_robustness']);
  });
});
