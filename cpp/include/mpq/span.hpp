// mpq/span.hpp: a pointer and a length, because C++17 has no std::span.
// Flat arrays cross the Python boundary as Spans without copies.
#pragma once
#include <cstddef>
#include <utility>

namespace mpq {

template <class T>
struct Span {
  T* data = nullptr;
  std::size_t size = 0;

  Span() = default;
  Span(T* d, std::size_t n) : data(d), size(n) {}
  // any contiguous container with data() and size(), e.g. std::vector
  template <class C, class = decltype(static_cast<T*>(std::declval<C&>().data())),
            class = decltype(std::declval<C&>().size())>
  Span(C& c) : data(c.data()), size(c.size()) {}
  template <class C, class = decltype(static_cast<T*>(std::declval<const C&>().data())),
            class = decltype(std::declval<const C&>().size())>
  Span(const C& c) : data(c.data()), size(c.size()) {}  // e.g. Span<const double> of a temporary vector

  T& operator[](std::size_t i) const { return data[i]; }
  T* begin() const { return data; }
  T* end() const { return data + size; }
  bool empty() const { return size == 0; }
};

}  // namespace mpq
