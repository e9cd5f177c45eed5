// A wipe comparison: two pictures of the same size on top of each other; the top one is
// shown on one side of the slider's position, the one beneath on the other.
"use strict";

function setupWipe(container, slider, top, side) {
  const apply = () => {
    const x = Number(slider.value);
    top.style.clipPath = side === "left" ? "inset(0 " + (100 - x) + "% 0 0)" : "inset(0 0 0 " + x + "%)";
  };
  slider.addEventListener("input", apply);
  container.addEventListener("pointermove", (e) => {
    if (!e.buttons) return;
    const box = container.getBoundingClientRect();
    slider.value = Math.round(100 * (e.clientX - box.left) / box.width);
    apply();
  });
  apply();
}
