// SHA-256 (FIPS 180-4), for verifying the files a package manifest lists.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fineparser {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  std::string hex_digest();  // finishes the hash; call once

 private:
  void block(const std::uint8_t* chunk);

  std::uint32_t state_[8];
  std::uint8_t buffer_[64];
  std::size_t buffered_ = 0;
  std::uint64_t length_ = 0;
};

// Hex sha256 of a file, read in 1 MiB chunks; throws std::runtime_error naming the file if unreadable.
std::string sha256_file(const std::string& path);

}  // namespace fineparser
